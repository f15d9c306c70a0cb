"""Every file in conf/ is loaded or validated against the code it configures."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest
import yaml

from dnsd.cli import _parser
from dnsd.config import load, read_environment

CONF = Path(__file__).resolve().parent.parent / "conf"


def serve_flags(argv: list[str]) -> None:
    """Parse ``dnsd serve`` arguments exactly as the CLI does (SystemExit on a bad flag)."""
    _parser().parse_args(["serve", *argv])


def test_every_conf_file_is_covered() -> None:
    """prometheus/ and grafana/ are checked by tests/test_prometheus.py."""
    covered = {"dnsd.toml", "container.toml", "hosts", "docker-compose.yml", "dnsd.service",
               "resolved-docker.conf", "prometheus", "grafana"}  # fmt: skip
    assert {p.name for p in CONF.iterdir()} == covered


@pytest.mark.parametrize("name", ["dnsd.toml", "container.toml"])
def test_toml_configs_load(name: str) -> None:
    config = load(str(CONF / name))
    assert config.server.listen


def test_compose_file() -> None:
    compose = yaml.safe_load((CONF / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"dnsd", "etcd", "web", "client"} <= set(services)
    dnsd = services["dnsd"]
    serve_flags(dnsd["command"])
    read_environment(dnsd.get("environment", {}))  # every DNSD_* variable is known
    assert any(v.endswith("/var/run/docker.sock:ro") for v in dnsd["volumes"])
    assert "sysctls" not in dnsd  # the image binds :53 as it is (tests/test_image.py)
    address = dnsd["networks"]["demo"]["ipv4_address"]
    for sample in ("web", "client"):
        assert services[sample]["dns"] == [address]
    assert "web.demo.docker" in " ".join(services["client"]["command"])
    assert services["web"]["labels"]["dnsd.service"]
    assert (CONF.parent / dnsd["build"].removeprefix("../").removeprefix("..")).exists()


def test_systemd_unit() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(CONF / "dnsd.service")
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert argv[0].endswith("/dnsd") and argv[1] == "serve"
    serve_flags(argv[2:])
    assert "HUP" in unit["Service"]["ExecReload"]
    assert unit["Service"]["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_resolved_drop_in_points_at_dnsd() -> None:
    resolved = configparser.ConfigParser()
    resolved.read(CONF / "resolved-docker.conf")
    config = load(str(CONF / "dnsd.toml"))
    assert resolved["Resolve"]["DNS"] == config.server.listen[0]
    domains = resolved["Resolve"]["Domains"].split()
    assert [f"~{zone.rstrip('.')}" for zone in config.server.zones] == domains


def test_conf_dnsd_toml_documents_every_key() -> None:
    import tomllib

    from dnsd.config import SECTIONS, _field_types

    written = tomllib.loads((CONF / "dnsd.toml").read_text())
    for section in SECTIONS:
        for key in _field_types(section):
            if (section, key) == ("static", "records"):
                continue  # an array of tables, shown as [[static.records]]
            assert key in written.get(section, {}), f"conf/dnsd.toml lacks {section}.{key}"


def test_flags_are_declared_once_and_documented() -> None:
    """docs/configuration.md's table, --help and the environment names all come from
    ``config.FLAGS``; each flag names a real key, and its stated default is the real one."""
    import dataclasses
    import typing

    from dnsd.cli import _parser
    from dnsd.config import FLAGS, SECTIONS, flag_table

    assert flag_table() in (CONF.parent / "docs/configuration.md").read_text()
    serve = next(
        action.choices["serve"] for action in _parser()._actions if action.dest == "command"
    )
    options = {o for action in serve._actions for o in action.option_strings}
    assert {flag.option for flag in FLAGS} <= options
    assert options - {flag.option for flag in FLAGS} == {"-h", "--help", "--config"}
    for flag in FLAGS:
        fields = {f.name: f for f in dataclasses.fields(SECTIONS[flag.section])}
        assert flag.key in fields, flag
        field = fields[flag.key]
        default = field.default_factory() if callable(field.default_factory) else field.default
        kind = typing.get_type_hints(SECTIONS[flag.section])[flag.key]
        if flag.switch is not None:
            assert kind is bool and default is not flag.switch, flag  # a switch changes it
        elif flag.also:
            continue  # its default is what is off without it (etcd off)
        elif isinstance(default, list) and default:
            assert flag.default == ", ".join(default), flag
        elif isinstance(default, str) and default:
            assert flag.default == default, flag


def test_the_documented_benchmark_command_runs() -> None:
    """docs/benchmark.md's command (set-up included) runs a benchmark to its figures."""
    import json
    import subprocess

    doc = (CONF.parent / "docs" / "benchmark.md").read_text()
    assert "scripts/bench mirror [--keys N]" in doc
    result = subprocess.run(
        [str(CONF.parent / "scripts" / "bench"), "mirror", "--keys", "500"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["keys"] == 500
