"""Configuration: precedence, errors that name the key and file, and every file in conf/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dnsd.cli import main
from dnsd.config import ConfigError, load
from dnsd.hostport import parse_hostport
from dnsd.source_setup import static_settings
from dnsd.sources.static import StaticSource

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "dnsd.toml"
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    config = load()
    assert config.server.listen == ["127.0.0.1:5300"]
    assert config.server.zones == ["docker."]
    assert config.server.ttl == 5 and config.server.negative_ttl == 5
    assert config.server.max_udp_size == 1232
    assert config.forward.enabled


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nlisten = ["127.0.0.1:1000"]\nttl = 9\nzones = ["a"]\n')
    assert load(path).server.listen == ["127.0.0.1:1000"]
    env = {"DNSD_LISTEN": "127.0.0.1:2000,[::1]:2000", "DNSD_SERVER_TTL": "11"}
    from_env = load(path, env)
    assert from_env.server.listen == ["127.0.0.1:2000", "[::1]:2000"]
    assert from_env.server.ttl == 11
    assert from_env.server.zones == ["a."]
    flags = {("server", "listen"): ["127.0.0.1:3000"]}
    assert load(path, env, flags).server.listen == ["127.0.0.1:3000"]
    assert load(path, {"DNSD_NO_FORWARD": "1"}).forward.enabled is False


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[server]\nlisen = []\n", "unknown key 'server.lisen' (did you mean 'listen'?)"),
        ("[server]\nzone = []\n", "(did you mean 'zones'?)"),
        ("[srever]\n", "unknown section [srever] (did you mean 'server'?)"),
        ("[server]\nttl = 'five'\n", "key 'server.ttl'"),
        ('[server]\nlisten = ["localhost:53"]\n', "key 'server.listen'"),
        ('[server]\nlisten = ["127.0.0.1:99999"]\n', "key 'server.listen'"),
        ('[forward]\nupstreams = ["1.2.3"]\n', "key 'forward.upstreams'"),
        ('[server]\nallow_recursion = ["10.0.0.0/33"]\n', "key 'server.allow_recursion'"),
        ("[server]\nmax_udp_size = 100\n", "key 'server.max_udp_size'"),
        ("[server]\nudp_miss_rate_per_client = -1\n", "key 'server.udp_miss_rate_per_client'"),
        ('[log]\nformat = "xml"\n', "key 'log.format'"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert fragment in str(info.value)
    assert path in str(info.value)


def test_unknown_environment_variable() -> None:
    with pytest.raises(ConfigError, match="DNSD_LISTN"):
        load(None, {"DNSD_LISTN": "127.0.0.1:53"})
    with pytest.raises(ConfigError, match="DNSD_SERVER_TTL"):
        load(None, {"DNSD_SERVER_TTL": "x"})


def test_parse_hostport() -> None:
    assert parse_hostport("1.2.3.4", 53) == ("1.2.3.4", 53)
    assert parse_hostport("1.2.3.4:5353", 53) == ("1.2.3.4", 5353)
    assert parse_hostport("[::1]:5353", 53) == ("::1", 5353)
    assert parse_hostport("::1", 53) == ("::1", 53)


def test_every_toml_in_conf_loads() -> None:
    tomls = sorted((ROOT / "conf").glob("*.toml"))
    assert tomls
    for path in tomls:
        config = load(str(path))
        settings = static_settings(config)
        owners = StaticSource(None, lambda s=settings: s, settings).build(settings)
        if path.name == "dnsd.toml":  # the example zone the README's run command serves
            assert sum(len(r) for r in owners.values()) > 0


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(ROOT / "conf" / "dnsd.toml")]) == 0
    bad = write(tmp_path, '[[static.records]]\nname = "x"\ntype = "A"\nvalue = "10.0.0.300"\n')
    assert main(["check-config", bad]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1: static.records[0]" in err and "10.0.0.300" in err  # file and line
    (tmp_path / "hosts").write_text("10.0.0.1 good\nnot-an-ip bad\n")
    with_hosts = write(tmp_path, '[static]\nhosts = ["hosts"]\n')
    assert main(["check-config", with_hosts]) == 2
    assert "hosts:2" in capsys.readouterr().err


def test_serve_with_bad_config_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nbogus = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "dnsd", "serve", "--config", path],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2
    assert "unknown key 'server.bogus'" in result.stderr


def test_help_and_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dnsd", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    for flag in ("--listen", "--zone", "--hosts", "--upstream", "--no-forward", "--log-format"):
        assert flag in result.stdout
    version = subprocess.run(
        [sys.executable, "-m", "dnsd", "version"], capture_output=True, text=True, timeout=20
    )
    assert version.stdout.startswith("dnsd ")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[etcd]\nadvertise = "sideways"\n', "key 'etcd.advertise'"),
        ('[etcd]\nadvertise = "host"\n', "key 'etcd.advertise_ip'"),
        ("[etcd]\nlease_ttl = 1\n", "key 'etcd.lease_ttl'"),
        ('[etcd]\nendpoints = ["nohost"]\n', "key 'etcd.endpoints'"),
        ('[etcd]\nprefix = "skydns"\n', "key 'etcd.prefix'"),
        ('[etcd]\nuser = "root"\npassword = "x"\n', "key 'etcd.user'"),
        ('[docker]\nzone = "other."\n', "key 'docker.zone'"),
        ("[docker]\nresync_interval = 0\n", "key 'docker.resync_interval'"),
    ],
)
def test_bad_docker_and_etcd_settings(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load(write(tmp_path, text))


def test_etcd_flags_turn_etcd_on() -> None:
    config = load(
        None, {"DNSD_ETCD": "10.0.0.1:2379,10.0.0.2:2379", "DNSD_ADVERTISE_IP": "192.0.2.1"}
    )
    assert config.etcd.enabled and config.etcd.endpoints == ["10.0.0.1:2379", "10.0.0.2:2379"]
    assert config.etcd.advertise == "host" and config.etcd.node_id


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[docker]\nurl = "not a url"\n', "docker.url"),
        ('[docker]\nurl = "unix://"\n', "docker.url"),
        ('[server]\nzones = ["my zone"]\n', "server.zones"),
        (
            '[[static.records]]\nname = "a.*.x"\ntype = "A"\nvalue = "10.0.0.1"\n',
            "wildcard is a whole leftmost",
        ),
    ],
)
def test_check_config_rejects_what_serve_cannot_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["check-config", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_tools_give_usage_errors_not_tracebacks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "web.docker", "BOGUS", "--server", "127.0.0.1:9"]) == 2
    assert "unknown record type 'BOGUS'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["records", "--source", "dockr"])
    assert exited.value.code == 2
    assert "invalid choice: 'dockr'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[server]\nttl = 99999999999\n", "server.ttl"),
        ("[server]\nnegative_ttl = 2147483648\n", "server.negative_ttl"),
        ("[forward]\nmax_ttl = 99999999999\n", "forward.max_ttl"),
        ("[forward]\nmax_negative_ttl = -1\n", "forward.max_negative_ttl"),
        ("[etcd]\nlease_ttl = 99999999999\n", "etcd.lease_ttl"),
    ],
)
def test_ttls_outside_dns_limits_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str
) -> None:
    path = write(tmp_path, text)
    assert main(["check-config", path]) == 2
    assert f"key '{key}'" in capsys.readouterr().err
    assert main(["serve", "--config", path]) == 2  # serve refuses what check-config refuses
    assert f"key '{key}'" in capsys.readouterr().err


def test_largest_dns_ttl_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nttl = 2147483647\nnegative_ttl = 2147483647\n")
    assert load(path).server.ttl == 2**31 - 1


@pytest.mark.parametrize(
    ("text", "warned"),
    [
        ('[server]\nzones = ["."]\n[etcd]\nenabled = true\n', "key 'server.zones': ."),
        ('[server]\nzones = ["docker.", "com"]\n[etcd]\nenabled = true\n', "com. is the root"),
        ('[server]\nallow_recursion = ["0.0.0.0/0"]\n', "open resolver"),
        ('[server]\nallow_recursion = ["127.0.0.1/8", "::/0"]\n', "open resolver"),
    ],
)
def test_dangerous_settings_are_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, warned: str
) -> None:
    path = write(tmp_path, text)
    assert main(["check-config", path]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and warned in err


@pytest.mark.parametrize(
    "text",
    [
        '[server]\nzones = ["."]\n',  # etcd off: only the operator's own records
        '[server]\nzones = ["corp.example."]\n[etcd]\nenabled = true\n',
        '[server]\nallow_recursion = ["0.0.0.0/0"]\n[forward]\nenabled = false\n',
    ],
)
def test_ordinary_settings_get_no_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    assert main(["check-config", write(tmp_path, text)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_default_zone_with_etcd_gets_no_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # docker. is a top-level name no registry delegates: publishing under it takes no one's
    assert main(["check-config", write(tmp_path, "[etcd]\nenabled = true\n")]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("section", "line", "key"),
    [
        ("server", "tcp_idle_timeout = 0", "server.tcp_idle_timeout"),
        ("server", "ttl = 2147483648", "server.ttl"),
        ("server", "negative_ttl = -1", "server.negative_ttl"),
        ("server", "tcp_max_connections = 0", "server.tcp_max_connections"),
        ("server", "answer_cache_bytes = 0", "server.answer_cache_bytes"),
        ("server", "listen = []", "server.listen"),
        ("server", "zones = []", "server.zones"),
        ("forward", "timeout = 0", "forward.timeout"),
        ("forward", "max_ttl = -5", "forward.max_ttl"),
        ("forward", "stale_for = -1", "forward.stale_for"),
        ("forward", "cache_size = 0", "forward.cache_size"),
        ("forward", "max_pending = -1", "forward.max_pending"),
        ("forward", 'rebind_allowed = ["a..b"]', "forward.rebind_allowed"),
        ("forward", 'domains = { "corp" = [] }', "forward.domains"),
        ("rrl", "slip = -1", "rrl.slip"),
        ("rrl", "responses_per_second = 0", "rrl.responses_per_second"),
        ("rrl", "ipv6_prefix = 129", "rrl.ipv6_prefix"),
        ("rrl", "ipv4_prefix = 33", "rrl.ipv4_prefix"),
        ("http", "request_timeout = 0", "http.request_timeout"),
        ("http", 'listen = "nowhere"', "http.listen"),
        ("log", "queries_per_second = 0", "log.queries_per_second"),
        ("log", 'level = "LOUD"', "log.level"),
        ("static", "max_hosts_bytes = 0", "static.max_hosts_bytes"),
        ("etcd", "lease_ttl = 1", "etcd.lease_ttl"),
        ("etcd", 'prefix = "skydns"', "etcd.prefix"),
        ("etcd", 'advertise = "moon"', "etcd.advertise"),
        ("docker", "resync_interval = 0", "docker.resync_interval"),
        ("docker", 'zone = "other"', "docker.zone"),
    ],
)
def test_each_bad_value_is_reported_under_its_own_key(
    tmp_path: Path, section: str, line: str, key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, f"[{section}]\n{line}\n"))
    assert f"key '{key}'" in str(info.value), str(info.value)


def test_an_unknown_variable_gets_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'DNSD_SERVER_TTL'"):
        load(None, {"DNSD_SERVR_TTL": "5"})


def test_a_top_level_zone_is_never_silently_accepted(tmp_path: Path) -> None:
    from dnsd.config import warnings

    config = load(write(tmp_path, '[server]\nzones = ["com"]\n'))
    assert any("top-level domain" in line and "never forwards" in line for line in warnings(config))
    assert warnings(load(write(tmp_path, '[server]\nzones = ["docker"]\n'))) == []


def _check_config(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    import os

    environ = {k: v for k, v in os.environ.items() if not k.startswith("DNSD_")}
    return subprocess.run(
        [sys.executable, "-m", "dnsd", "check-config", *args],
        capture_output=True, text=True, timeout=30, env={**environ, **(env or {})}, cwd=ROOT,
    )  # fmt: skip


def test_a_bad_value_names_where_it_was_written() -> None:
    """The variable, the flag, or FILE:LINE: never the file for a value that came from
    elsewhere."""
    from_env = _check_config("conf/dnsd.toml", env={"DNSD_LISTEN": "127.0.0.1:99999"})
    assert from_env.returncode == 2
    assert from_env.stderr.startswith(
        "dnsd: environment variable DNSD_LISTEN: key 'server.listen': port out of range"
    ), from_env.stderr
    from_flag = _check_config("conf/dnsd.toml", "--listen", "127.0.0.1:99999")
    assert from_flag.stderr.startswith("dnsd: flag --listen: key 'server.listen'"), from_flag.stderr
    lines = (ROOT / "conf/dnsd.toml").read_text().splitlines()
    ttl_line = next(n for n, line in enumerate(lines, 1) if line.startswith("ttl = "))
    bad = "\n".join(line.replace("ttl = 5", "ttl = -1") if n == ttl_line else line
                    for n, line in enumerate(lines, 1))  # fmt: skip
    (ROOT / ".bad-ttl.toml").write_text(bad)
    try:
        from_file = _check_config(".bad-ttl.toml")
    finally:
        (ROOT / ".bad-ttl.toml").unlink()
    assert from_file.stderr.startswith(f"dnsd: .bad-ttl.toml:{ttl_line}: key 'server.ttl'")


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[server]\nttl = -3\nnope = 1\n[forward]\ntimeout = 0\nmax_ttl = "x"\n'
        '[log]\nlevel = "LOUD"\n',
    )
    result = _check_config(path, "--zone", "bad zone", env={"DNSD_DOCKER_RESYNC_INTERVAL": "0"})
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    expected = [
        f"{path}:3: unknown key 'server.nope'",
        f"{path}:6: key 'forward.max_ttl': expected a number",
        "flag --zone: key 'server.zones': not a domain name",
        f"{path}:2: key 'server.ttl'",
        f"{path}:5: key 'forward.timeout'",
        f"{path}:8: key 'log.level'",
        "environment variable DNSD_DOCKER_RESYNC_INTERVAL: key 'docker.resync_interval'",
    ]
    for text in expected:
        assert any(text in line for line in lines), (text, lines)
    assert all(line.startswith("dnsd: ") for line in lines)


@pytest.mark.parametrize("word,value", [("yes", True), ("on", True), ("true", True),
                                        ("1", True), ("no", False), ("off", False),
                                        ("false", False), ("0", False)])  # fmt: skip
def test_every_boolean_takes_yes_no_on_off_true_false_1_0(
    tmp_path: Path, word: str, value: bool
) -> None:
    import dataclasses

    from dnsd.config import SECTIONS

    booleans = [
        (section, f.name)
        for section, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
        if f.type in (bool, "bool")
    ]
    assert len(booleans) >= 8
    for section, key in booleans:
        env = {f"DNSD_{section}_{key}".upper(): word}
        from_env = load(None, env)
        assert getattr(getattr(from_env, section), key) is value, (section, key, word)
        path = write(tmp_path, f'[{section}]\n{key} = "{word}"\n')
        if (section, key) == ("etcd", "enabled") and value:
            continue  # etcd on needs nothing more, but stays off in the file test below
        assert getattr(getattr(load(path), section), key) is value, (section, key, word)
    switched = load(None, {"DNSD_NO_FORWARD": word})
    assert switched.forward.enabled is (not value)


def test_check_config_print_shows_the_settings_in_effect_and_where_they_came_from() -> None:
    import tomllib

    result = _check_config(
        "conf/dnsd.toml", "--print", "--zone", "corp.", "--zone", "docker.",
        env={"DNSD_SERVER_TTL": "17", "DNSD_ETCD_PASSWORD": "s3cret"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = tomllib.loads(result.stdout)
    expected = load(str(ROOT / "conf/dnsd.toml"), {"DNSD_SERVER_TTL": "17"},
                    {("server", "zones"): ["corp.", "docker."]})  # fmt: skip
    assert printed["server"]["ttl"] == 17 and printed["server"]["zones"] == ["corp.", "docker."]
    assert printed["forward"]["timeout"] == expected.forward.timeout
    assert printed["static"]["hosts"] == expected.static.hosts
    assert "s3cret" not in result.stdout
    assert "ttl = 17  # environment variable DNSD_SERVER_TTL" in result.stdout
    assert "# flag --zone" in result.stdout and "# conf/dnsd.toml:" in result.stdout
