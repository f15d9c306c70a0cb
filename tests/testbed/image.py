"""Building dnsd's image without a registry: a Python base from Debian packages (debootstrap),
wheels downloaded on the host, and `docker build --network none` from a clean context."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BASE_IMAGE = "local/python:3.11"
BASE_CACHE = Path("/var/cache/dnsd-test/python-base.tar")
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


def import_base(docker_url: str) -> str:
    tarball = base_tarball()
    with open(tarball, "rb") as data:
        subprocess.run(
            ["docker", "-H", docker_url, "import", "-c", 'CMD ["/bin/bash"]', "-", BASE_IMAGE],
            stdin=data, check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    return BASE_IMAGE


def build_context(folder: Path) -> Path:
    """The repository's image inputs plus every wheel the build needs (downloaded here)."""
    for name in CONTEXT_FILES:
        shutil.copy2(ROOT / name, folder / name)
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


def build(docker_url: str, tag: str, context: Path) -> str:
    base = import_base(docker_url)
    result = subprocess.run(
        ["docker", "-H", docker_url, "build", "--network", "none", "--build-arg",
         f"BASE={base}", "--build-arg", "PIP_EXTRA=--no-index", "-t", tag, str(context)],
        capture_output=True, text=True, timeout=900,
        env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"docker build failed:\n{result.stdout[-4000:]}\n{result.stderr}")
    return tag
