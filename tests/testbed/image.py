"""Building dnsd's image without a registry: a Python base from Debian packages (debootstrap),
wheels downloaded on the host, and `docker build --network none` from a clean context.

Also the command behind ``scripts/build-image`` (``python -m testbed.image --help``), so users
build the image the way the image test does."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BASE_IMAGE = "local/python:3.11"
BASE_CACHE = Path(os.environ.get("DNSD_BASE_CACHE", "/var/cache/dnsd-test/python-base.tar"))
MIRROR = "http://deb.debian.org/debian"
ROOT = Path(__file__).resolve().parents[2]
CONTEXT_FILES = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md")
CONTEXT_DIRS = ("dnsd", "conf")


def base_tarball() -> Path:
    """A minimal Debian bookworm with python3 + venv, cached outside the repository."""
    if BASE_CACHE.exists():
        return BASE_CACHE
    BASE_CACHE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dnsd-base-") as tmp:
        root = Path(tmp) / "root"
        subprocess.run(
            ["debootstrap", "--variant=minbase",
             "--include=python3,python3-venv,ca-certificates", "bookworm", str(root), MIRROR],
            check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(root / leftover, ignore_errors=True)
        partial = BASE_CACHE.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True)
        partial.rename(BASE_CACHE)
    return BASE_CACHE


def _docker(docker_url: str, *args: str, check: bool = True) -> str:
    result = subprocess.run(
        ["docker", "-H", docker_url, *args], capture_output=True, text=True, timeout=300
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def _image_ids(docker_url: str) -> set[str]:
    """Every image in the daemon, intermediate (build-stage) ones included."""
    return set(_docker(docker_url, "images", "--all", "--quiet", "--no-trunc").split())


def _has_image(docker_url: str, reference: str) -> bool:
    return bool(_docker(docker_url, "images", "--quiet", reference))


def import_base(docker_url: str) -> str:
    """The base image: imported from the cached tarball unless the daemon has it (so the
    dependency layer built on it earlier is reused)."""
    if _has_image(docker_url, BASE_IMAGE):
        return BASE_IMAGE
    tarball = base_tarball()
    with open(tarball, "rb") as data:
        subprocess.run(
            ["docker", "-H", docker_url, "import", "-c", 'CMD ["/bin/bash"]', "-", BASE_IMAGE],
            stdin=data, check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    return BASE_IMAGE


def build_context(folder: Path) -> Path:
    """The repository's image inputs plus every wheel the build needs (downloaded here); a
    folder filled before is filled afresh."""
    for name in CONTEXT_FILES:
        shutil.copy2(ROOT / name, folder / name)
    for name in (*CONTEXT_DIRS, "wheels"):
        shutil.rmtree(folder / name, ignore_errors=True)
    for name in CONTEXT_DIRS:
        shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = folder / "wheels"
    wheels.mkdir()
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--dest", str(wheels), "--only-binary=:all:", "setuptools>=64", "wheel"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--dest", str(wheels), str(folder)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    for own in wheels.glob("dnsd-*"):
        own.unlink()  # the image builds dnsd itself from the copied source
    return folder


def build(docker_url: str, tag: str, context: Path, keep_cache: bool = False) -> str:
    """Build ``tag``; returns docker build's output.  Unless ``keep_cache``, every image the
    build added that the tagged image is not made of (the build stage, the base's tag if this
    build imported it) is removed again."""
    before = _image_ids(docker_url)
    had_base = _has_image(docker_url, BASE_IMAGE)
    base = import_base(docker_url)
    try:
        return _docker_build(docker_url, base, tag, context)
    finally:
        if not keep_cache:
            _remove_leftovers(docker_url, tag, before, had_base)


def _docker_build(docker_url: str, base: str, tag: str, context: Path) -> str:
    result = subprocess.run(
        ["docker", "-H", docker_url, "build", "--network", "none", "--build-arg",
         f"BASE={base}", "--build-arg", "PIP_EXTRA=--no-index", "-t", tag, str(context)],
        capture_output=True, text=True, timeout=900,
        env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"docker build failed:\n{result.stdout[-4000:]}\n{result.stderr}")
    return result.stdout


def shipped_layers(docker_url: str, tag: str) -> set[str]:
    """The image ``tag`` and the images it is made of (its parent chain)."""
    if not _has_image(docker_url, tag):
        return set()
    history = _docker(docker_url, "history", "--quiet", "--no-trunc", tag).split()
    return {entry for entry in history if entry.startswith("sha256:")}


def _remove_leftovers(docker_url: str, tag: str, before: set[str], had_base: bool) -> None:
    if not had_base:
        _docker(docker_url, "rmi", "--no-prune", BASE_IMAGE, check=False)  # untag only
    leftovers = _image_ids(docker_url) - before - shipped_layers(docker_url, tag)
    while leftovers:  # children first: an image with a child cannot go yet
        for image_id in sorted(leftovers):  # --no-prune: parents from before this build stay
            _docker(docker_url, "rmi", "--no-prune", image_id, check=False)
        remaining = leftovers & _image_ids(docker_url)
        if remaining == leftovers:
            break
        leftovers = remaining


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/build-image",
        description="Build dnsd's image with no registry: a Debian base made by debootstrap "
        f"(cached in {BASE_CACHE}, imported as {BASE_IMAGE}), the dependencies' wheels "
        "downloaded from PyPI on this host, then 'docker build --network none'. "
        "(With registry access, 'docker build -t dnsd .' does the same from python:3.11-slim.)",
    )
    parser.add_argument("--tag", default="dnsd:latest", help="image tag (default dnsd:latest)")
    default_url = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    parser.add_argument("--docker-url", default=default_url, help=f"default {default_url}")
    parser.add_argument(
        "--context", type=Path, help="build context folder to fill (default: a temporary one)"
    )
    parser.add_argument(
        "--keep-cache", action="store_true",
        help=f"keep the build stage and {BASE_IMAGE} in the daemon, so a rebuild after a "
        "code change reuses the dependency layer (default: remove all the image is not made of)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        if args.context is not None:
            args.context.mkdir(parents=True, exist_ok=True)
            output = build(args.docker_url, args.tag, build_context(args.context), args.keep_cache)
        else:
            with tempfile.TemporaryDirectory(prefix="dnsd-context-") as tmp:
                output = build(args.docker_url, args.tag, build_context(Path(tmp)), args.keep_cache)
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", None) or ""
        print(f"build-image: {exc}\n{detail}".rstrip(), file=sys.stderr)
        return 1
    print(output.rstrip())
    print(f"built {args.tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
