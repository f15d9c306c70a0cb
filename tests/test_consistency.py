"""Answers completed across an upstream wait stay true to the store (a real etcd, a local
upstream held until the test lets it answer).

A question whose CNAME chain leaves the zones waits for the upstream; a change to the name
made during that wait must not be lost when the answer finally comes: neither in the answer
cache (later askers) nor in what is served next.
"""

from __future__ import annotations

import json
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import dns.message
import pytest
from conftest import Dnsd, DnsdFactory, FakeUpstream, StopAtEnd, eventually, query, rcode
from testbed.etcd import Etcd

EXTERNAL = "ext.example.com."


def _answers(reply: dns.message.Message) -> list[str]:
    return sorted(f"{rrset.rdtype.name} {item}" for rrset in reply.answer for item in rrset)


@pytest.fixture
def held_upstream(stop_at_end: StopAtEnd) -> Iterator[FakeUpstream]:
    """An upstream whose answers wait for ``gate`` (set: they flow)."""
    upstream = FakeUpstream(scripted={EXTERNAL: f"{EXTERNAL} 3600 IN A 1.2.3.4"})
    upstream.gate = threading.Event()
    stop_at_end(upstream.start())
    yield upstream
    upstream.gate.set()


def _race_zone(etcd: Etcd, dnsd_factory: DnsdFactory, upstream: FakeUpstream) -> tuple[Dnsd, str]:
    zone = f"race{uuid.uuid4().hex[:6]}.test"
    dnsd = dnsd_factory(
        "--zone", zone, "--etcd", etcd.endpoints, "--upstream", f"127.0.0.1:{upstream.port}"
    )
    dnsd.wait_source("etcd")
    return dnsd, zone


def _ask_while_held(dnsd: Dnsd, name: str) -> tuple[threading.Thread, list[dns.message.Message]]:
    replies: list[dns.message.Message] = []
    asker = threading.Thread(target=lambda: replies.append(query(dnsd.port, name, timeout=10)))
    asker.start()
    return asker, replies


def _applied(dnsd: Dnsd, name: str, value: str | None) -> bool:
    rows = json.loads(dnsd._get(f"/records?name={name}"))
    values = [row.get("value") for row in rows]
    return value in values if value is not None else not rows


@pytest.mark.parametrize("change", ["address", "deleted"])
def test_a_change_during_an_upstream_wait_is_not_lost(
    etcd: Etcd, dnsd_factory: DnsdFactory, held_upstream: FakeUpstream, change: str
) -> None:
    dnsd, zone = _race_zone(etcd, dnsd_factory, held_upstream)
    key = f"/skydns/{'/'.join(reversed(zone.split('.')))}/app"
    name = f"app.{zone}."
    etcd.put(key, json.dumps({"host": EXTERNAL.rstrip(".")}))
    eventually(lambda: _applied(dnsd, name, EXTERNAL))
    asker, replies = _ask_while_held(dnsd, name)
    eventually(lambda: held_upstream.queries)  # the question waits for the upstream now
    if change == "address":
        etcd.put(key, json.dumps({"host": "10.0.0.5"}))
        eventually(lambda: _applied(dnsd, name, "10.0.0.5"))
        expected, expected_rcode = ["A 10.0.0.5"], "NOERROR"
    else:
        etcd.ctl("del", key)
        eventually(lambda: _applied(dnsd, name, None))
        expected, expected_rcode = [], "NXDOMAIN"
    assert held_upstream.gate is not None
    held_upstream.gate.set()  # the upstream answers the question asked before the change
    asker.join(10)
    assert replies, "the question asked before the change was not answered"
    # Whatever that answer was, from now on every answer is the changed name's (the cached
    # answer to the earlier question must not outlive the change).
    for _ in range(5):
        for tcp in (False, True):
            reply = query(dnsd.port, name, tcp=tcp)
            assert (rcode(reply), _answers(reply)) == (expected_rcode, expected)
    assert dnsd.metric("dnsd_answers_rebuilt_total") >= 1


def test_a_name_the_store_gains_during_an_upstream_wait_is_answered_from_the_store(
    tmp_path: Path, dnsd_factory: DnsdFactory, held_upstream: FakeUpstream
) -> None:
    """A forwarded name gains a record in the store (a hosts file reloaded) while its question
    is upstream: the upstream's answer, which arrives after, is not kept over it."""
    held_upstream.scripted["late.example.com."] = "late.example.com. 3600 IN A 1.2.3.4"
    hosts = tmp_path / "hosts"
    hosts.write_text("")
    dnsd = dnsd_factory(
        "--hosts", str(hosts), "--upstream", f"127.0.0.1:{held_upstream.port}",
        config="[static]\noutside_zones = true\n",
    )  # fmt: skip
    asker, replies = _ask_while_held(dnsd, "late.example.com.")
    eventually(lambda: held_upstream.queries)
    hosts.write_text("10.1.1.1 late.example.com.\n")
    dnsd.proc.send_signal(signal.SIGHUP)
    eventually(lambda: _applied(dnsd, "late.example.com.", "10.1.1.1"))
    assert held_upstream.gate is not None
    held_upstream.gate.set()
    asker.join(10)
    assert replies, "the question asked before the change was not answered"
    for _ in range(5):
        assert _answers(query(dnsd.port, "late.example.com.")) == ["A 10.1.1.1"]
