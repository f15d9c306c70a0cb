"""The examples in README.md and docs/ run: their TOML loads, their ``dnsd`` commands parse,
and the quickstart's questions are answered by dnsd serving conf/dnsd.toml."""

from __future__ import annotations

import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

from conftest import DnsdFactory

from dnsd.cli import _parser
from dnsd.config import load

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def example_lines(page: Path, command: str) -> list[str]:
    """Code-block lines of ``page`` that run ``command`` (its trailing comment cut)."""
    return [
        line.strip().split("  #", 1)[0].strip()
        for line in page.read_text().splitlines()
        if line.startswith(f"    {command} ")
    ]


def test_every_toml_example_in_the_docs_loads(tmp_path: Path) -> None:
    blocks = 0
    for page in sorted(DOCS.glob("*.md")):
        for index, block in enumerate(page.read_text().split("```toml")[1:]):
            text = block.split("```", 1)[0]
            path = tmp_path / f"{page.stem}-{index}.toml"
            path.write_text(text)
            load(str(path))
            blocks += 1
    assert blocks >= 3


def test_every_dnsd_command_in_the_docs_parses() -> None:
    """Each ``dnsd ...`` example line of README.md and docs/ is a command the CLI takes."""
    commands = 0
    for page in PAGES:
        for text in example_lines(page, "dnsd"):
            if "[" in text or "..." in text:
                continue  # a synopsis
            argv = shlex.split(text.replace('"$(hostname)"', "host1"))[1:]
            try:
                _parser().parse_args(argv)
            except SystemExit as exc:
                if exc.code:  # "dnsd version" and such exit 0 only with --help
                    raise AssertionError(f"{page.name}: {text}") from exc
            commands += 1
    assert commands >= 5


def test_the_quickstart_questions_are_answered(dnsd_factory: DnsdFactory) -> None:
    """README's and the quickstart's questions to a dnsd serving conf/dnsd.toml (its static
    zone and hosts file; the container examples are docs/docker.md's, tested there)."""
    server = dnsd_factory("--config", str(ROOT / "conf" / "dnsd.toml"), "--no-forward")
    ours = {"5300": str(server.port), "9153": str(server.http_port)}
    pages = (ROOT / "README.md", DOCS / "quickstart.md")
    lines = [(p, line) for p in pages for tool in ("dig", "dnsd", "curl")
             for line in example_lines(p, tool)]  # fmt: skip
    ran = 0
    for page, text in lines:
        if "[" in text or "web1" in text or text.startswith(("dnsd serve", "dnsd version")):
            continue  # a synopsis; a container of the reader's; the server itself
        for theirs, port in ours.items():
            text = text.replace(theirs, port)
        argv = shlex.split(text)
        if argv[0] == "dnsd":
            argv = [sys.executable, "-m", "dnsd", *argv[1:]]
            if argv[3] == "records":
                argv += ["--http", f"127.0.0.1:{server.http_port}"]
        elif argv[0] == "dig":
            argv[1:1] = ["+time=1", "+tries=1"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        assert result.returncode == 0, (page.name, text, result.stderr)
        if argv[0] == "dig":
            assert "status: NOERROR" in result.stdout, (page.name, text, result.stdout)
            assert "ANSWER: 0," not in result.stdout, (page.name, text, result.stdout)
        ran += 1
    assert ran >= 7
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/ready") as reply:
        assert reply.status == 200


def test_the_documented_commands_run_as_written_in_a_new_shell() -> None:
    """After the README's set-up (scripts/setup, which scripts/run and scripts/test call),
    `dnsd ...` runs by name in a new login shell with a clean environment, and it is this
    checkout's dnsd."""
    root = Path(__file__).resolve().parent.parent
    shell = subprocess.run(
        ["env", "-i", f"HOME={Path.home()}", "bash", "-lc",
         "command -v dnsd && dnsd version && dnsd check-config conf/dnsd.toml"],
        capture_output=True, text=True, timeout=60, cwd=root,
    )  # fmt: skip
    assert shell.returncode == 0, (shell.stdout, shell.stderr)
    found, version, checked = shell.stdout.splitlines()[:3]
    assert Path(found).resolve() == (root / ".venv/bin/dnsd").resolve(), (
        f"{found} is another checkout's dnsd: run scripts/setup here"
    )
    assert version.startswith("dnsd ") and checked.startswith("conf/dnsd.toml: ok")
