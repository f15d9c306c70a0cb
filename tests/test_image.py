"""The Dockerfile: built without a registry (local Debian base, wheels from the host,
--network none), run as a non-root user against the test dockerd, queried with dig."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from conftest import eventually
from testbed import image
from testbed.dockerd import IMAGE, Dockerd

TAG = "local/dnsd:test"


def dig(server: str, name: str) -> str:
    return subprocess.run(
        ["dig", f"@{server}", "-p", "53", "+short", "+time=1", "+tries=1", name],
        capture_output=True, text=True, timeout=10,
    ).stdout.strip()  # fmt: skip


def build_image(dockerd: Dockerd, context: Path, *options: str) -> str:
    """``scripts/build-image``, as a user runs it (docs/resolver.md); its output."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "build-image"
    result = subprocess.run(
        [str(script), "--docker-url", dockerd.url, "--tag", TAG, "--context", str(context),
         *options],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"built {TAG}" in result.stdout
    return result.stdout


def images(dockerd: Dockerd) -> set[str]:
    return set(dockerd.docker("images", "--all", "--quiet", "--no-trunc").split())


def dependency_step(output: str) -> str:
    steps = output.split("\nStep ")
    return next(s for s in steps if "--find-links /wheels /src" in s.splitlines()[0])


def change_code(context: Path) -> None:
    (context / "dnsd" / "cli.py").write_text((context / "dnsd" / "cli.py").read_text() + "\n#\n")


@pytest.fixture(scope="module")
def built(dockerd: Dockerd, tmp_path_factory: pytest.TempPathFactory) -> str:
    if not shutil.which("debootstrap"):
        pytest.fail("the image test needs debootstrap (scripts/setup --system)")
    context = tmp_path_factory.mktemp("context")
    # A plain build leaves only the image: no base tag, no build-stage images.
    before = images(dockerd)
    build_image(dockerd, context)
    assert images(dockerd) - before <= image.shipped_layers(dockerd.url, TAG)
    assert not dockerd.docker("images", "--quiet", image.BASE_IMAGE)
    # --keep-cache keeps them, so a rebuild after a code change reuses the dependency layer.
    build_image(dockerd, context, "--keep-cache")
    assert dockerd.docker("images", "--quiet", image.BASE_IMAGE)
    change_code(context)
    result = subprocess.run(
        ["docker", "-H", dockerd.url, "build", "--network", "none", "--build-arg",
         f"BASE={image.BASE_IMAGE}", "--build-arg", "PIP_EXTRA=--no-index", "-t", TAG,
         str(context)],
        capture_output=True, text=True, timeout=600, env={"DOCKER_BUILDKIT": "0", "PATH":
        "/usr/sbin:/usr/bin:/sbin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Using cache" in dependency_step(result.stdout), result.stdout
    return TAG


def test_image_serves_docker_names_as_non_root(dockerd: Dockerd, built: str) -> None:
    assert dockerd.docker("image", "inspect", "-f", "{{.Config.User}}", built) == "10053:10053"
    target = "imgtarget"
    dockerd.docker("run", "-d", "--pull", "never", "--name", target, IMAGE, "sleep", "1000")
    target_ip = dockerd.docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", target)
    gid = os.stat(dockerd.socket).st_gid
    dockerd.docker(
        "run", "-d", "--pull", "never", "--name", "dnsd-img",  # as docs/resolver.md: no sysctl
        "-v", f"{dockerd.socket}:/var/run/docker.sock:ro", "--group-add", str(gid),
        "-e", "DNSD_NO_FORWARD=1", "-e", "DNSD_NODE_ID=imghost", built,  # as docs/etcd.md
    )  # fmt: skip
    try:
        server = dockerd.docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", "dnsd-img")
        eventually(lambda: dig(server, f"{target}.docker") == target_ip, timeout=30)
        url = f"http://{server}:9153/records?name={target}"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert {row["node"] for row in json.load(response)} == {"imghost"}
        health = ("inspect", "-f", "{{.State.Health.Status}}", "dnsd-img")
        eventually(lambda: dockerd.docker(*health) == "healthy", timeout=30)
        logs = dockerd.docker("logs", "dnsd-img")
        assert (
            '"level": "INFO"'
            in subprocess.run(
                ["docker", "-H", dockerd.url, "logs", "dnsd-img"], capture_output=True, text=True
            ).stderr
            + logs
        )
        # Exit code 0, not 137: dnsd ended on SIGTERM, before docker's 10 s SIGKILL.
        dockerd.docker("stop", "-t", "10", "dnsd-img")
        assert dockerd.docker("inspect", "-f", "{{.State.ExitCode}}", "dnsd-img") == "0"
        lines = [json.loads(line) for line in _logs(dockerd, "dnsd-img").splitlines() if line]
        messages = [line["message"] for line in lines]
        assert "shutting down" in messages and "stopped" in messages  # an orderly stop
        assert not any("exiting now" in message for message in messages)
    finally:
        dockerd.docker("rm", "-f", "dnsd-img", target, check=False)


def _logs(dockerd: Dockerd, name: str) -> str:
    result = subprocess.run(
        ["docker", "-H", dockerd.url, "logs", name], capture_output=True, text=True, timeout=30
    )
    return result.stdout + result.stderr


def test_context_has_no_test_or_venv_files() -> None:
    ignored = (Path(image.ROOT) / ".dockerignore").read_text().split()
    for entry in (".venv", "tests", ".git"):
        assert entry in ignored
