"""``dnsd register`` / ``deregister``: names for what is not a container, written to a real
etcd and answered by a second dnsd."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Dnsd, StopAtEnd, eventually, query, rcode, start_dnsd
from test_etcd import answers, host, zone
from testbed.etcd import Etcd
from testbed.fake_engine import container

from dnsd.config import load
from dnsd.register import RegistrationError, registration
from dnsd.sources.etcd_publish import Publisher, PublishSettings
from dnsd.stats import Stats

LEASE_TTL_S = 3


class Registered:
    """A running ``dnsd register``."""

    def __init__(self, tmp: Path, etcd: Etcd, *args: str) -> None:
        config = tmp / "register.toml"
        config.write_text(f"[etcd]\nlease_ttl = {LEASE_TTL_S}\n")
        argv = [sys.executable, "-m", "dnsd", "register", *args, "--etcd", etcd.endpoints,
                "--config", str(config)]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self.proc.stdout is not None
        self.lines: list[str] = []  # up to "registered ...", printed once etcd has the keys
        while not self.lines or not self.lines[-1].startswith("registered"):
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
        self.first = self.lines[-1] if self.lines else ""

    def output(self) -> str:
        assert self.proc.stdout is not None
        return "".join(self.lines) + self.proc.stdout.read()

    def end(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def stop(self) -> None:
        """At the end of a test, whatever happened (``stop_at_end``)."""
        self.end(signal.SIGKILL)


def dnsd(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dnsd", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def server(etcd: Etcd, tmp_path: Path) -> Iterator[tuple[Dnsd, str]]:
    z = zone()
    served = start_dnsd(tmp_path, "--no-forward", "--zone", z, "--etcd", etcd.endpoints)
    served.wait_source("etcd")
    yield served, z
    served.stop()


def test_a_registered_name_is_answered_by_another_dnsd_until_register_ends(
    etcd: Etcd, tmp_path: Path, server: tuple[Dnsd, str], stop_at_end: StopAtEnd
) -> None:
    served, z = server
    reg = stop_at_end(Registered(tmp_path, etcd, f"db.{z}.", "10.9.0.5", "--port", "5432",
                                 "--service", "postgresql", "--node-id", "vmhost"))  # fmt: skip
    assert reg.first.startswith(f"registered db.{z}. A, _postgresql._tcp.db.{z}. SRV")
    eventually(lambda: answers(served.port, f"db.{z}") == ["10.9.0.5"])
    assert answers(served.port, f"_postgresql._tcp.db.{z}", "SRV") == [f"10 10 5432 db.{z}."]
    assert answers(served.port, "5.0.9.10.in-addr.arpa", "PTR") == [f"db.{z}."]
    rows = dnsd("records", "--http", f"127.0.0.1:{served.http_port}", "--name", "db")
    assert "vmhost" in rows.stdout, rows.stdout
    nodes = dnsd("records", "--nodes", "--http", f"127.0.0.1:{served.http_port}").stdout
    assert any(line.split()[:2] == ["vmhost", "2"] for line in nodes.splitlines()), nodes
    # SIGTERM withdraws at once (the lease is revoked): gone well before the lease's 10 s.
    assert reg.end() == 0
    eventually(lambda: rcode(query(served.port, f"db.{z}")) == "NXDOMAIN", timeout=6)


def test_a_killed_register_is_withdrawn_within_the_lease(
    etcd: Etcd, tmp_path: Path, server: tuple[Dnsd, str], stop_at_end: StopAtEnd
) -> None:
    served, z = server
    reg = stop_at_end(Registered(tmp_path, etcd, f"vm.{z}.", "fd00::7"))
    eventually(lambda: answers(served.port, f"vm.{z}", "AAAA") == ["fd00::7"])
    reg.end(signal.SIGKILL)
    eventually(lambda: answers(served.port, f"vm.{z}", "AAAA") == [], timeout=LEASE_TTL_S + 6)


def test_deregister_ends_a_running_register_and_only_its_address(
    etcd: Etcd, tmp_path: Path, server: tuple[Dnsd, str], stop_at_end: StopAtEnd
) -> None:
    served, z = server
    first = stop_at_end(Registered(tmp_path, etcd, f"api.{z}.", "10.9.1.1", "--port", "8080"))
    second = stop_at_end(Registered(tmp_path, etcd, f"api.{z}.", "10.9.1.2", "--port", "8080"))
    eventually(lambda: answers(served.port, f"api.{z}") == ["10.9.1.1", "10.9.1.2"])
    done = dnsd("deregister", f"api.{z}.", "10.9.1.1", "--etcd", etcd.endpoints)
    assert done.returncode == 0, done.stderr
    assert "2 key(s)" in done.stdout  # the address and its SRV record
    assert first.proc.wait(5) == 0
    assert "was deregistered" in first.output()
    eventually(lambda: answers(served.port, f"api.{z}") == ["10.9.1.2"])
    assert answers(served.port, f"_8080._tcp.api.{z}", "SRV") == [f"10 10 8080 api.{z}."]
    assert second.proc.poll() is None
    # Without an address: every registration of the name.
    assert dnsd("deregister", f"api.{z}.", "--etcd", etcd.endpoints).returncode == 0
    assert second.proc.wait(5) == 0
    eventually(lambda: rcode(query(served.port, f"api.{z}")) == "NXDOMAIN")
    again = dnsd("deregister", f"api.{z}.", "--etcd", etcd.endpoints)
    assert again.returncode == 1 and "no registration" in again.stderr


def test_a_dnsd_starting_on_the_same_node_keeps_its_registrations(
    etcd: Etcd, tmp_path: Path, stop_at_end: StopAtEnd
) -> None:
    """The clean-up of keys an earlier run left takes the node's container keys only."""
    z = zone()
    stop_at_end(Registered(tmp_path, etcd, f"nas.{z}.", "10.9.2.2", "--node-id", "shared"))
    served, _ = host(stop_at_end, tmp_path, etcd, "shared", z)
    eventually(lambda: answers(served.port, f"nas.{z}") == ["10.9.2.2"])
    time.sleep(0.5)  # past the publisher's first sync
    assert answers(served.port, f"nas.{z}") == ["10.9.2.2"]


def test_register_refuses_bad_input_with_a_clear_message(etcd: Etcd) -> None:
    cases = {
        ("db", "10.0.0.300"): "not an IP address",
        ("db", "db.example.org"): "only addresses are registered",
        ("org.", "10.0.0.1"): "a top-level name",
        ("db", "10.0.0.1", "--service", "pg"): "--service needs --port",
        ("db", "10.0.0.1", "--port", "70000"): "between 1 and 65535",
        ("-x-.docker.", "10.0.0.1"): "",
        ("db", "10.0.0.1", "--ttl", "-1"): "--ttl",
        # What every dnsd's mirror would skip: refused before "registered".
        ("db", "fe80::1%eth0"): "scoped address",
        ("x.*.docker.", "10.0.0.1", "--wildcard"): "'*' label other than first",
        ("db", "10.0.0.1", "--node-id", "n" * 300): "label longer than 63 bytes",
        # A wildcard only when meant.
        ("*.docker.", "10.0.0.8"): "--wildcard",
    }
    for args, message in cases.items():
        result = dnsd("register", *args, "--etcd", etcd.endpoints, timeout=10)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    unreachable = dnsd("deregister", "db", "--etcd", "127.0.0.1:1", timeout=30)
    assert unreachable.returncode == 1 and "etcd" in unreachable.stderr


def test_a_relative_name_is_in_the_first_zone() -> None:
    config = load(None, {"DNSD_ZONE": "corp.,docker."})
    assert registration(config, "db", "10.0.0.1").name == "db.corp."
    assert registration(config, "db.docker", "10.0.0.1").name == "db.docker."
    with pytest.raises(RegistrationError):
        registration(config, "a..b", "10.0.0.1")


# --- the publisher tells a revoked lease from one that lapsed -----------------------------------


class FakeLease:
    id = 0x1234

    def __init__(self, client: FakeClient) -> None:
        self.client = client

    def refresh(self) -> list[Any]:
        if self.client.down:
            raise ConnectionError("etcd down")
        ttl = -1 if self.client.gone else LEASE_TTL_S
        return [type("Reply", (), {"TTL": ttl})()]

    def revoke(self) -> None:
        self.client.gone = True


class FakeClient:
    def __init__(self) -> None:
        self.down = False
        self.gone = False
        self.grants = 0
        self.transactions = type("Ops", (), {"put": lambda *a, **k: a, "delete": lambda *a: a})()

    def lease(self, _ttl: int) -> FakeLease:
        self.grants += 1
        self.gone = False
        return FakeLease(self)

    def transaction(self, *_: Any) -> None:
        if self.down:
            raise ConnectionError("etcd down")

    def close(self) -> None:
        pass


@pytest.mark.parametrize("end_when_revoked", [True, False])
def test_a_revoked_lease_ends_a_registration_a_lapsed_one_is_granted_again(
    end_when_revoked: bool,
) -> None:
    now = [0.0]
    client = FakeClient()
    publisher = Publisher(
        lambda: client, "/skydns", PublishSettings("n", lease_ttl=LEASE_TTL_S), Stats(),
        remove_earlier_run=False, end_when_revoked=end_when_revoked, clock=lambda: now[0],
    )  # fmt: skip
    publisher.start()
    try:
        eventually(lambda: publisher.synced)
        # etcd out of reach for longer than the lease: it lapsed, granted again on return.
        client.down = True
        now[0] += LEASE_TTL_S + 5
        client.gone = True
        time.sleep(1.2)
        client.down = False
        eventually(lambda: client.grants == 2, timeout=5)
        assert not publisher.revoked
        # Revoked while its time was still running (deregister).
        client.gone = True
        if end_when_revoked:
            eventually(lambda: publisher.revoked, timeout=5)
        else:
            eventually(lambda: client.grants == 3, timeout=5)
            assert not publisher.revoked
    finally:
        publisher.stop()
        publisher.join(5)


def test_a_wildcard_is_registered_when_asked(
    etcd: Etcd, server: tuple[Dnsd, str], tmp_path: Path, stop_at_end: StopAtEnd
) -> None:
    served, z = server
    registered = stop_at_end(Registered(tmp_path, etcd, f"*.{z}.", "10.0.0.8", "--wildcard"))
    assert registered.first.startswith("registered"), registered.output()
    eventually(lambda: answers(served.port, f"anything.{z}") == ["10.0.0.8"])


def test_a_containers_name_cannot_be_registered(
    etcd: Etcd, server: tuple[Dnsd, str], tmp_path: Path, stop_at_end: StopAtEnd
) -> None:
    """Another node's container holds web1: registering web1 would add an address to the
    container's answers; refused, and the answers stay the container's."""
    served, z = server
    _, engine = host(stop_at_end, tmp_path, etcd, "other-node", z)
    engine.containers["c" * 64] = container("c" * 64, "web1", "10.1.0.5")
    engine.emit("start", "c" * 64)
    eventually(lambda: answers(served.port, f"web1.{z}") == ["10.1.0.5"])
    result = dnsd("register", f"web1.{z}.", "6.6.6.6", "--etcd", etcd.endpoints, timeout=20)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "a container's name" in result.stderr and "registered" not in result.stdout
    assert answers(served.port, f"web1.{z}") == ["10.1.0.5"]


def test_a_registered_service_under_a_sub_name_is_browsable_with_its_txt(
    etcd: Etcd, server: tuple[Dnsd, str], tmp_path: Path, stop_at_end: StopAtEnd
) -> None:
    """docs/etcd.md's example, db.prod.<zone> with --service postgresql: a DNS-SD instance of
    the domain it is in (prod.<zone>), browsable there, with its --txt strings."""
    served, z = server
    registered = stop_at_end(Registered(
        tmp_path, etcd, f"db.prod.{z}.", "10.9.0.6", "--port", "5432", "--service",
        "postgresql", "--txt", "path=/main", "--txt", "tls=on",
    ))  # fmt: skip
    assert registered.first.startswith("registered"), registered.output()
    types = f"_postgresql._tcp.prod.{z}."
    eventually(lambda: answers(served.port, f"_services._dns-sd._udp.prod.{z}", "PTR") == [types])
    instance = f"db._postgresql._tcp.prod.{z}."
    assert answers(served.port, types, "PTR") == [instance]
    assert answers(served.port, instance, "SRV") == [f"10 10 5432 db.prod.{z}."]
    assert answers(served.port, instance, "TXT") == ['"path=/main" "tls=on"']
    assert answers(served.port, f"_postgresql._tcp.db.prod.{z}", "TXT") == ['"path=/main" "tls=on"']
    bad = dnsd("register", "db", "10.0.0.1", "--port", "80", "--txt", "novalue",
               "--etcd", etcd.endpoints)  # fmt: skip
    assert bad.returncode == 2 and "--txt 'novalue'" in bad.stderr
