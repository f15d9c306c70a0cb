"""Fixtures: a real dnsd process on loopback, and a scriptable upstream DNS server on 127.0.0.1.

No test ever talks to the machine's own resolver: every dnsd started here forwards only to a
FakeUpstream (or has forwarding off).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import dns.message
import dns.query
import dns.rcode
import pytest
from testbed.dnsd import ROOT, Dnsd, eventually, free_port, query, start_dnsd, wait_ready
from testbed.upstream import LOOP_PROBE_SUFFIX, FakeUpstream

__all__ = [
    "LOOP_PROBE_SUFFIX", "ROOT", "Dnsd", "DnsdFactory", "FakeUpstream", "StopAtEnd",
    "eventually", "free_port", "query", "rcode", "start_dnsd", "wait_ready",
]  # fmt: skip


DnsdFactory = Callable[..., Dnsd]
_Stoppable = TypeVar("_Stoppable")  # start_dnsd's arguments without tmp_path


@pytest.fixture
def dnsd_factory(tmp_path: Path) -> Iterator[DnsdFactory]:
    """Start dnsd processes for a test; each is stopped when the test ends, pass or fail."""
    started: list[Dnsd] = []

    def factory(*args: str, **kw: object) -> Dnsd:
        dnsd = start_dnsd(tmp_path, *args, **kw)  # type: ignore[arg-type]
        started.append(dnsd)
        return dnsd

    yield factory
    for dnsd in started:
        dnsd.stop()


StopAtEnd = Callable[[_Stoppable], _Stoppable]


@pytest.fixture
def stop_at_end() -> Iterator[StopAtEnd]:
    """``x = stop_at_end(thing)``: ``thing.stop()`` when the test ends, pass or fail (the last
    one given first)."""
    given: list[Any] = []

    def register(thing: _Stoppable) -> _Stoppable:
        given.append(thing)
        return thing

    yield register
    for thing in reversed(given):
        thing.stop()


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def etcd() -> Iterator[object]:
    """One real etcd member per test module (tests/testbed/etcd.py)."""
    from testbed.etcd import Etcd, available

    reason = available()
    if reason:
        pytest.fail(f"real etcd tests need etcd-server: {reason}")
    server = Etcd(1).start()
    yield server
    server.stop()


def rcode(message: dns.message.Message) -> str:
    return dns.rcode.to_text(message.rcode())


@pytest.fixture
def switching_often() -> Iterator[None]:
    """The GIL switches threads as often as it can while the test runs (races show)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.fixture(scope="session")
def dockerd() -> Iterator[object]:
    """A private Docker Engine for the whole session (see tests/testbed/dockerd.py)."""
    from testbed import dockerd as testbed_dockerd

    reason = testbed_dockerd.available()
    if reason:
        pytest.fail(f"real Docker tests need a private dockerd: {reason}")
    from testbed import certs as testbed_certs

    testbed_dockerd.stop_leftovers()
    certs = testbed_certs.make(Path(tempfile.mkdtemp(prefix="dnsd-certs-")))
    tls_port = free_port()
    tls = [
        "-H", f"tcp://127.0.0.1:{tls_port}", "--tlsverify", "--tlscacert", str(certs.ca),
        "--tlscert", str(certs.server_cert), "--tlskey", str(certs.server_key),
    ]  # fmt: skip
    daemon = testbed_dockerd.Dockerd(tls).start()
    daemon.tls_url = f"tcp://127.0.0.1:{tls_port}"  # type: ignore[attr-defined]
    daemon.certs = certs  # type: ignore[attr-defined]
    daemon.import_busybox()
    yield daemon
    daemon.stop()
