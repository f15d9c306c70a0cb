"""The static source: hosts-file and config-record parsing, relative names."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DnsdFactory, eventually

from dnsd.cli import main
from dnsd.config import ConfigError, load
from dnsd.record import MxValue, Record, SrvValue
from dnsd.records import RecordStore
from dnsd.source_setup import static_settings
from dnsd.sources.static import AbsoluteNames, admission, config_records, parse_hosts

NAMES = AbsoluteNames(["docker.", "svc.local."])


def test_relative_names_belong_to_the_first_zone() -> None:
    assert NAMES.absolute("web") == "web.docker."
    assert NAMES.absolute("Web.Docker") == "web.docker."
    assert NAMES.absolute("db.svc.local") == "db.svc.local."
    assert NAMES.absolute("example.com.") == "example.com."
    for bad in ("", "a..b", "x" * 64, "sp ace", "a/b"):
        with pytest.raises(ValueError):
            NAMES.absolute(bad)


def test_hosts_lines() -> None:
    text = "# comment\n10.0.0.1 web web-1  # trailing\n\nfd00::1 web\nbad\n300.1.1.1 x\n"
    records, errors, bad = parse_hosts(text, "h", NAMES, 5)
    assert bad == 2
    assert {(r.name, r.rtype, r.value) for r in records} == {
        ("web.docker.", "A", "10.0.0.1"),
        ("web-1.docker.", "A", "10.0.0.1"),
        ("web.docker.", "AAAA", "fd00::1"),
    }
    assert [e.split(":")[1] for e in errors] == ["5", "6"]


def test_config_records_every_type() -> None:
    specs = [
        {"name": "a", "type": "A", "value": "10.0.0.1", "ttl": 60},
        {"name": "a", "type": "aaaa", "value": "fd00::1"},
        {"name": "c", "type": "CNAME", "value": "a"},
        {"name": "_x._tcp.a", "type": "SRV", "value": "1 2 3 a"},
        {"name": "t", "type": "TXT", "value": ["one", "two"]},
        {"name": "docker.", "type": "MX", "value": "10 mail"},
        {"name": "1.0.0.10.in-addr.arpa.", "type": "PTR", "value": "a"},
    ]
    records = config_records(specs, NAMES, 5)
    assert records[0].ttl == 60 and records[1].ttl == 5
    assert records[2].value == "a.docker."
    assert records[3].value == SrvValue(1, 2, 3, "a.docker.")
    assert records[4].value == ("one", "two")
    assert records[5].value == MxValue(10, "mail.docker.")
    assert records[6].name == "1.0.0.10.in-addr.arpa."


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "a", "type": "A", "value": "fd00::1"},
        {"name": "a", "type": "AAAA", "value": "10.0.0.1"},
        {"name": "a", "type": "SRV", "value": "1 2 x a"},
        {"name": "a", "type": "SRV", "value": "1 2 70000 a"},
        {"name": "a", "type": "MX", "value": "mail"},
        {"name": "a", "type": "HINFO", "value": "x"},
        {"name": "a", "type": "A", "value": "10.0.0.1", "ttl": -1},
        {"name": "a", "type": "A", "value": "10.0.0.1", "tll": 5},
        {"name": "a", "type": "A"},
        {"name": "a", "type": "TXT", "value": "x" * 300},
    ],
)
def test_bad_config_records_are_named(spec: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"static.records\[0\]"):
        config_records([spec], NAMES, 5)


OUTSIDE = '[[static.records]]\nname = "www.example.com."\ntype = "A"\nvalue = "6.6.6.6"\n'


def test_static_names_outside_the_zones_need_the_opt_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "outside.toml"
    path.write_text(OUTSIDE)
    assert main(["check-config", str(path)]) == 2
    assert "outside the zones" in capsys.readouterr().err
    hosts = tmp_path / "hosts"
    hosts.write_text("6.6.6.6 www.example.com.\n10.0.0.1 web\n")
    path.write_text(f'[static]\nhosts = ["{hosts}"]\n')
    assert main(["check-config", str(path)]) == 2  # the bad line is named
    assert "hosts:1" in capsys.readouterr().err
    path.write_text("[static]\noutside_zones = true\n" + OUTSIDE)
    assert main(["check-config", str(path)]) == 0
    assert "static.outside_zones is on" in capsys.readouterr().out


def test_opted_in_outside_names_get_no_automatic_ptr() -> None:
    config = load(environ={"DNSD_STATIC_OUTSIDE_ZONES": "true"})
    store = RecordStore(admission(static_settings(config)))
    store.replace_owner("static", "config", [Record("www.example.com.", "A", "6.6.6.6", 5)])
    store.replace_owner("static", "hosts", [Record("web.docker.", "A", "10.0.0.1", 5)])
    assert store.lookup("www.example.com.", "A")
    assert store.reverse("6.6.6.6.in-addr.arpa.") == []
    assert store.reverse("1.0.0.10.in-addr.arpa.") == ["web.docker."]
    # A source other than the operator's never leaves the zones, opt-in or not.
    store.replace_owner("etcd", "k", [Record("evil.example.com.", "A", "6.6.6.6", 5)])
    assert store.lookup("evil.example.com.", "A") == []


def test_wildcard_records_follow_rfc4592(dnsd_factory: DnsdFactory, tmp_path: Path) -> None:
    """``*.dev`` answers names below ``dev`` that do not exist, never ``dev`` itself or a name
    that exists; a wildcard added later replaces a cached NXDOMAIN at once."""
    from conftest import query, rcode

    hosts = tmp_path / "hosts"
    hosts.write_text("10.1.0.1 *.dev\n10.1.0.2 api.dev\n10.1.0.3 deep.x.dev\n")
    config = tmp_path / "dnsd.toml"
    config.write_text(f'[static]\nhosts = ["{hosts}"]\nwatch_interval = 0.1\n')
    server = dnsd_factory("--no-forward", "--config", str(config))

    def addresses(name: str, rdtype: str = "A") -> list[str]:
        return sorted(r.to_text() for rs in query(server.port, name, rdtype).answer for r in rs)

    reply = query(server.port, "Anything.DEV.docker")
    assert [(rs.name.to_text(), r.to_text()) for rs in reply.answer for r in rs] == [
        ("Anything.DEV.docker.", "10.1.0.1")
    ]  # synthesised under the asked name, its case echoed
    assert addresses("a.b.c.dev.docker") == ["10.1.0.1"]  # closest encloser: dev
    assert addresses("api.dev.docker") == ["10.1.0.2"]  # an existing name wins
    assert addresses("y.x.dev.docker") == []  # x.dev exists (empty non-terminal)...
    assert rcode(query(server.port, "y.x.dev.docker")) == "NXDOMAIN"  # ...: no wildcard
    assert rcode(query(server.port, "dev.docker")) == "NOERROR"  # the parent: NODATA
    assert addresses("dev.docker") == []
    assert rcode(query(server.port, "q.dev.docker", "TXT")) == "NOERROR"  # NODATA
    assert rcode(query(server.port, "10.1.0.1.in-addr.arpa", "PTR")) == "REFUSED"  # no PTR
    assert rcode(query(server.port, "q.late.docker")) == "NXDOMAIN"  # now cached
    hosts.write_text(hosts.read_text() + "10.1.0.9 *.late\n")
    eventually(lambda: addresses("q.late.docker") == ["10.1.0.9"])


def _log_lines(dnsd: object, fragment: str) -> int:
    return sum(fragment in line for line in dnsd.log().splitlines())  # type: ignore[attr-defined]


def test_bad_hosts_lines_cost_one_log_line_per_load(
    dnsd_factory: DnsdFactory, tmp_path: Path
) -> None:
    import os
    import signal

    from conftest import query

    hosts = tmp_path / "hosts"
    random_bytes = os.urandom(1_000_000)  # thousands of bad lines, and a good one at the end
    hosts.write_bytes(random_bytes + b"\n10.0.0.7 good\n")
    config = f'[static]\nhosts = ["{hosts}"]\nwatch_interval = 60\n'
    dnsd = dnsd_factory("--no-forward", config=config)
    assert query(dnsd.port, "good.docker").answer
    dnsd.proc.send_signal(signal.SIGHUP)
    eventually(lambda: dnsd.metric("dnsd_reloads") >= 1)
    assert query(dnsd.port, "good.docker").answer
    assert _log_lines(dnsd, "bad line(s) skipped") == 2  # the load and the reload
    assert len(dnsd.log()) < 20_000  # a summary with examples, not a line per bad line


def test_oversized_hosts_file_is_refused_and_the_last_records_stay(
    dnsd_factory: DnsdFactory, tmp_path: Path
) -> None:
    import signal

    from conftest import query

    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.7 good\n")
    config = f'[static]\nhosts = ["{hosts}"]\nwatch_interval = 0.1\nmax_hosts_bytes = 100000\n'
    dnsd = dnsd_factory("--no-forward", config=config)
    assert query(dnsd.port, "good.docker").answer
    hosts.write_text("".join(f"10.1.{i // 250}.{i % 250} h{i}\n" for i in range(20000)))
    eventually(lambda: _log_lines(dnsd, "over static.max_hosts_bytes") >= 1)
    assert query(dnsd.port, "good.docker").answer  # the last good records
    assert not query(dnsd.port, "h1.docker").answer
    assert dnsd.metric("dnsd_reload_errors") >= 1
    dnsd.proc.send_signal(signal.SIGHUP)
    assert dnsd.proc.poll() is None
    path = tmp_path / "check.toml"
    path.write_text(config)
    assert main(["check-config", str(path)]) == 2


def test_a_sighup_storm_is_logged_in_a_few_lines(dnsd_factory: DnsdFactory, tmp_path: Path) -> None:
    import signal
    import time

    from conftest import query

    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.7 good\n")
    config = f'[static]\nhosts = ["{hosts}"]\nwatch_interval = 60\n'
    dnsd = dnsd_factory("--no-forward", config=config)
    before = len(dnsd.log().splitlines())
    for _ in range(300):
        dnsd.proc.send_signal(signal.SIGHUP)
        time.sleep(0.005)
    eventually(lambda: dnsd.metric("dnsd_reloads") >= 1)
    assert query(dnsd.port, "good.docker").answer
    added = len(dnsd.log().splitlines()) - before
    assert added <= 6, dnsd.log()[-2000:]  # was two lines per signal


def _blocklist(count: int) -> str:
    """An ad-block hosts list: valid lines, every name outside dnsd's zones (so refused one by
    one: parsing costs what the file holds, applying almost nothing)."""
    return "".join(f"0.0.0.0 ads{i}.tracker{i % 97}.example.com.\n" for i in range(count))


def test_a_big_hosts_file_is_parsed_off_the_event_loop(
    dnsd_factory: DnsdFactory, tmp_path: Path
) -> None:
    """A reload of 200,000 lines (about 2 s of parsing, on the event loop before) runs on a
    worker thread: a probe on the loop's path (new names each time) loses nothing."""
    import signal

    from conftest import query
    from testbed.etcd_load import Probe

    hosts = tmp_path / "hosts"
    hosts.write_text("10.9.9.9 probe\n")
    config = f'[static]\nhosts = ["{hosts}"]\nwatch_interval = 60\n'
    dnsd = dnsd_factory("--no-forward", config=config)
    hosts.write_text("10.9.9.9 probe\n" + _blocklist(200_000) + "10.0.0.7 good\n")
    # 1 s: generous for a busy machine, and half what the parse held the loop on it.
    with Probe(dnsd.port, "probe.docker", timeout=1.0, miss=True) as probe:
        dnsd.proc.send_signal(signal.SIGHUP)
        eventually(lambda: query(dnsd.port, "good.docker").answer, timeout=60)
    assert probe.lost == 0, probe.summary()
    assert len(probe.latencies) > 20, probe.summary()
    assert _log_lines(dnsd, "200000 bad line(s) skipped") == 1


def _addresses(count: int, last: int) -> str:
    return "".join(f"10.{i >> 8 & 255}.{i & 255}.{last} n{i}\n" for i in range(count))


def test_a_big_hosts_change_is_applied_between_queries(
    dnsd_factory: DnsdFactory, tmp_path: Path
) -> None:
    """A reload that changes the address of 200,000 names (2.5 s of store work, all on the
    event loop before) is applied in slices of a few milliseconds: a probe on the loop's path
    loses nothing and waits little; the new addresses are all served at the end."""
    import signal

    from conftest import query
    from testbed.etcd_load import Probe

    hosts = tmp_path / "hosts"
    hosts.write_text("10.9.9.9 probe\n" + _addresses(200_000, 1))
    config = f'[static]\nhosts = ["{hosts}"]\nwatch_interval = 60\n'
    dnsd = dnsd_factory("--no-forward", config=config)
    hosts.write_text("10.9.9.9 probe\n" + _addresses(200_000, 2))
    with Probe(dnsd.port, "probe.docker", timeout=2.0, miss=True) as probe:
        dnsd.proc.send_signal(signal.SIGHUP)
        eventually(lambda: dnsd.metric("dnsd_reloads_total") == 1, timeout=60)
    # In one piece the loop is held for the whole change (2.5 s here, more on a busy
    # machine): a question asked then waits it out, past the 2 s the probe gives it.  In
    # slices none waits more than a few of them.  (Latencies: bench/etcd_bulk.py.)
    assert probe.lost == 0, probe.summary()
    assert len(probe.latencies) > 50, probe.summary()
    for i in (0, 123_456, 199_999):
        answer = query(dnsd.port, f"n{i}.docker").answer
        assert [r.address for r in answer[0]] == [f"10.{i >> 8 & 255}.{i & 255}.2"]


def _ended_within(dnsd: object, seconds: float) -> float:
    import signal
    import time

    proc = dnsd.proc  # type: ignore[attr-defined]
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(seconds)
    except Exception:
        proc.kill()
        proc.wait()
        raise AssertionError(f"dnsd still running {seconds} s after SIGTERM") from None
    assert proc.returncode == 0, dnsd.log()[-2000:]  # type: ignore[attr-defined]
    return time.monotonic() - started


def test_sigterm_ends_dnsd_during_a_long_reload(dnsd_factory: DnsdFactory, tmp_path: Path) -> None:
    """SIGTERM while a 400,000-line reload is being parsed: dnsd ends within its shutdown
    deadline (it waited for the whole parse before)."""
    import signal
    import time

    from dnsd.daemon import SHUTDOWN_DEADLINE_S

    hosts = tmp_path / "hosts"
    hosts.write_text("10.9.9.9 probe\n")
    config = f'[static]\nhosts = ["{hosts}"]\nwatch_interval = 60\n'
    dnsd = dnsd_factory("--no-forward", config=config)
    hosts.write_text(_blocklist(400_000))
    dnsd.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert _ended_within(dnsd, SHUTDOWN_DEADLINE_S + 3) < SHUTDOWN_DEADLINE_S + 3
    assert "stopped" in dnsd.log()


def test_sigterm_ends_dnsd_while_the_event_loop_is_busy(
    dnsd_factory: DnsdFactory, tmp_path: Path
) -> None:
    """SIGTERM during a first load of 300,000 hosts lines (900,000 names: many seconds with
    the event loop busy): the watchdog ends dnsd at the deadline, exit status 0."""
    import time

    from dnsd.daemon import SHUTDOWN_DEADLINE_S

    hosts = tmp_path / "hosts"
    hosts.write_text(
        "".join(
            f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255} a{i} b{i} c{i}\n" for i in range(300_000)
        )
    )
    config = f'[static]\nhosts = ["{hosts}"]\n'
    dnsd = dnsd_factory("--no-forward", config=config, wait=False)
    time.sleep(1.5)
    assert dnsd.proc.poll() is None
    assert _ended_within(dnsd, SHUTDOWN_DEADLINE_S + 3) < SHUTDOWN_DEADLINE_S + 3
    assert "exiting now" in dnsd.log()
