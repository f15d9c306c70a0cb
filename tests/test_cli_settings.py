"""Every command reads the settings ``serve`` reads: the file, the ``DNSD_*`` environment and
flags; client commands find the running server from them (real processes and sockets)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DnsdFactory, free_port


def dnsd_command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DNSD_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "dnsd", *args], capture_output=True, text=True, timeout=30,
        env=environment,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("env", "flags", "message"),
    [
        ({"DNSD_SERVER_TTL": "abc"}, (), "DNSD_SERVER_TTL: expected a number, got 'abc'"),
        ({"DNSD_SERVR_TTL": "5"}, (), "unknown variable DNSD_SERVR_TTL"),
        ({}, ("--listen", "localhost:5300"), "only IP addresses are accepted"),
        ({"DNSD_LISTEN": "127.0.0.1:99999"}, (), "key 'server.listen'"),
    ],
)
def test_check_config_checks_what_serve_would_run_with(
    tmp_path: Path, env: dict[str, str], flags: tuple[str, ...], message: str
) -> None:
    config = tmp_path / "ok.toml"
    config.write_text("[server]\nttl = 5\n")
    assert dnsd_command("check-config", str(config)).returncode == 0
    checked = dnsd_command("check-config", str(config), *flags, env=env)
    served = dnsd_command("serve", "--config", str(config), "--no-docker", *flags, env=env)
    assert checked.returncode == served.returncode == 2, (checked, served)
    assert message in checked.stderr and message in served.stderr, (checked.stderr, served.stderr)


def test_client_commands_find_the_server_from_the_settings(
    dnsd_factory: DnsdFactory, tmp_path: Path
) -> None:
    """``query`` asks the first listen address and ``records`` the HTTP endpoint given by
    the environment or the config file; a wildcard listen address is reached on loopback."""
    port, http = free_port(), free_port()
    config = tmp_path / "dnsd.toml"
    config.write_text(
        f'[server]\nlisten = ["0.0.0.0:{port}"]\n[http]\nlisten = "127.0.0.1:{http}"\n'
        '[[static.records]]\nname = "web"\ntype = "A"\nvalue = "10.0.0.10"\n'
    )
    dnsd_factory("--config", str(config), "--no-forward", "--http", f"127.0.0.1:{http}", port=port)
    by_file = dnsd_command("query", "web.docker", "--config", str(config))
    assert by_file.returncode == 0 and "10.0.0.10" in by_file.stdout, by_file
    by_env = dnsd_command("query", "web.docker", env={"DNSD_LISTEN": f"127.0.0.1:{port}"})
    assert by_env.returncode == 0 and "10.0.0.10" in by_env.stdout, by_env
    records = dnsd_command("records", env={"DNSD_HTTP_LISTEN": f"127.0.0.1:{http}"})
    assert records.returncode == 0 and "web.docker." in records.stdout, records
    records = dnsd_command("records", env={"DNSD_CONFIG": str(config)})
    assert records.returncode == 0 and "10.0.0.10" in records.stdout, records
    bad = dnsd_command("query", "web.docker", env={"DNSD_SERVR_TTL": "5"})
    assert bad.returncode == 2 and "DNSD_SERVR_TTL" in bad.stderr


def test_records_table_matches_names_within_the_zones_and_shows_txt_as_dns_does(
    dnsd_factory: DnsdFactory,
) -> None:
    http = free_port()
    config = (
        '[[static.records]]\nname = "nc-db"\ntype = "A"\nvalue = "10.0.0.5"\n'
        '[[static.records]]\nname = "nc-db"\ntype = "TXT"\nvalue = ["v=1", "say \\"hi\\""]\n'
        '[[static.records]]\nname = "nc-db.other"\ntype = "A"\nvalue = "10.0.0.6"\n'
    )
    dnsd_factory("--no-forward", "--http", f"127.0.0.1:{http}", config=config)
    table = dnsd_command("records", "--http", f"127.0.0.1:{http}", "--name", "nc-db")
    assert table.returncode == 0, table
    lines = [line for line in table.stdout.splitlines()[1:] if line.strip()]
    assert len(lines) == 2, table.stdout  # not nc-db.other.docker.
    assert any("10.0.0.5" in line for line in lines)
    assert any('"v=1" "say \\"hi\\""' in line for line in lines), table.stdout
    full = dnsd_command("records", "--http", f"127.0.0.1:{http}", "--name", "nc-db.docker.")
    assert len([x for x in full.stdout.splitlines()[1:] if x.strip()]) == 2, full.stdout
