"""The etcd mirror at cluster scale, against a real etcd: bulk writes absorbed while serving,
prefixes over gRPC's message limit, and bad keys that cost only themselves.

Each test uses its own prefix, so the many keys written here never reach another test's dnsd.
Speed figures (how long until every key answers, the probe's p99) are bench/etcd_bulk.py's;
here the probe only has to lose nothing."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Dnsd, StopAtEnd, eventually, query, rcode, start_dnsd
from testbed.etcd import Etcd
from testbed.etcd_load import Probe, address, bulk_delete, bulk_put, client, service_keys


def answers(port: int, name: str, rdtype: str = "A") -> list[str]:
    reply = query(port, name, rdtype)
    return sorted(item.to_text() for rrset in reply.answer for item in rrset)


@pytest.fixture
def prefix(etcd: Etcd) -> Iterator[str]:
    name = f"/scale{uuid.uuid4().hex[:8]}"
    yield name
    etcd.ctl("del", "--prefix", name, timeout=120)


def serve(tmp_path: Path, etcd: Etcd, prefix: str, zone: str, *args: str) -> Dnsd:
    hosts = tmp_path / f"hosts-{uuid.uuid4().hex[:6]}"
    hosts.write_text(f"10.9.9.9 probe.{zone}\n")
    config = f'[etcd]\nprefix = "{prefix}"\npublish = false\n'
    server = start_dnsd(
        tmp_path, "--no-forward", "--zone", zone, "--etcd", etcd.endpoints,
        "--hosts", str(hosts), *args, config=config,
    )  # fmt: skip
    server.wait_source("etcd", timeout=120)
    return server


# Generous for a busy machine; applied in one piece, the bulk change held the loop for many
# seconds (18 s of CPU for 20,000 keys, a third of the probe lost).  Latencies: bench/etcd_bulk.py.
GENEROUS_S = 3.0


def test_bulk_write_is_absorbed_while_serving(
    stop_at_end: StopAtEnd, etcd: Etcd, prefix: str, tmp_path: Path
) -> None:
    """20,000 keys in transactions of 125 (one parent): the event loop applies them in slices,
    so a probe on a cached name and one on the loop's path (new names each time) lose
    nothing; then every key answers, and so does the bulk delete."""
    zone, count = "bulk", 20_000
    server = stop_at_end(serve(tmp_path, etcd, prefix, zone))
    keys = service_keys(prefix, zone, count)
    with (
        Probe(server.port, f"probe.{zone}", timeout=GENEROUS_S) as cached,
        Probe(server.port, f"probe.{zone}", timeout=GENEROUS_S, miss=True) as loop,
    ):
        bulk_put(etcd.endpoints, keys)
        last = f"k{count - 1}.svc0.{zone}"
        eventually(lambda: answers(server.port, last) == [address(count - 1)], timeout=120)
    assert cached.lost == 0, cached.summary()
    assert loop.lost == 0, loop.summary()
    assert len(cached.latencies) > 10 and len(loop.latencies) > 10
    for i in random.sample(range(count), 200):
        assert answers(server.port, f"k{i}.svc0.{zone}") == [address(i)]
    assert server.metric("dnsd_etcd_bad_keys") == 0
    with Probe(server.port, f"probe.{zone}", timeout=GENEROUS_S, miss=True) as loop:
        bulk_delete(etcd.endpoints, list(keys))
        eventually(lambda: rcode(query(server.port, f"svc0.{zone}")) == "NXDOMAIN", 120)
    assert loop.lost == 0, loop.summary()
    assert "Traceback" not in server.log()


def test_prefix_over_the_grpc_message_limit_is_listed_in_pages(
    stop_at_end: StopAtEnd, etcd: Etcd, prefix: str, tmp_path: Path
) -> None:
    """Three values of 1.4 MB (4.2 MB together: one range reply would be refused with
    RESOURCE_EXHAUSTED) beside ordinary keys: a dnsd started afterwards serves them all."""
    zone = "big"
    writer = client(etcd.endpoints)
    try:
        for i in range(3):
            value = {"host": f"10.20.0.{i + 1}", "padding": "x" * 1_400_000}
            writer.put(f"{prefix}/{zone}/large/l{i}", json.dumps(value))
        for i in range(20):
            writer.put(f"{prefix}/{zone}/small/s{i}", json.dumps({"host": f"10.21.0.{i + 1}"}))
    finally:
        writer.close()
    server = stop_at_end(serve(tmp_path, etcd, prefix, zone))
    eventually(lambda: len(answers(server.port, f"small.{zone}")) == 20, timeout=60)
    assert answers(server.port, f"large.{zone}") == ["10.20.0.1", "10.20.0.2", "10.20.0.3"]
    assert "RESOURCE_EXHAUSTED" not in server.log()


def test_100000_keys_are_listed_in_pages(
    stop_at_end: StopAtEnd, etcd: Etcd, prefix: str, tmp_path: Path
) -> None:
    """100,000 keys (about 7 MB as one reply) under 100 service names."""
    zone, count = "many", 100_000
    bulk_put(etcd.endpoints, service_keys(prefix, zone, count, parents=100))
    server = stop_at_end(serve(tmp_path, etcd, prefix, zone))
    last = f"k{count - 1}.svc{(count - 1) % 100}.{zone}"
    eventually(lambda: answers(server.port, last) == [address(count - 1)], timeout=180)
    eventually(lambda: server.metric("dnsd_records", source="etcd") >= 2 * count, 180)
    for i in random.sample(range(count), 100):
        assert answers(server.port, f"k{i}.svc{i % 100}.{zone}") == [address(i)]
    whole = query(server.port, f"svc7.{zone}", "A", tcp=True)  # 1,000 addresses
    assert sum(len(rrset) for rrset in whole.answer) == count // 100
    assert "RESOURCE_EXHAUSTED" not in server.log()


def test_a_bad_key_costs_only_itself(
    stop_at_end: StopAtEnd, etcd: Etcd, prefix: str, tmp_path: Path
) -> None:
    """A scoped IPv6 address in a transaction with good keys: the good keys answer, on a
    running dnsd and on one started afterwards (the list path); the bad key is counted and
    named in the log once, and /ready stays ok."""
    zone = "bad"
    server = stop_at_end(serve(tmp_path, etcd, prefix, zone))
    good = {
        f"{prefix}/{zone}/web/a": b'{"host": "10.30.0.1"}',
        f"{prefix}/{zone}/web/b": b'{"host": "fe80::1%eth0"}',
        f"{prefix}/{zone}/web/c": b'{"host": "10.30.0.3"}',
        f"{prefix}/{zone}/web/d": b'{"host": "fd00::4", "port": 80, "targetstrip": 9}',
    }
    bulk_put(etcd.endpoints, good)
    eventually(lambda: answers(server.port, f"web.{zone}") == ["10.30.0.1", "10.30.0.3"])
    assert server.metric("dnsd_etcd_bad_keys") == 2
    restarted = serve(tmp_path, etcd, prefix, zone)
    try:
        assert answers(restarted.port, f"web.{zone}") == ["10.30.0.1", "10.30.0.3"]
        assert answers(restarted.port, f"c.web.{zone}") == ["10.30.0.3"]
        assert restarted.source("etcd")["status"] == "ok"
        assert restarted.metric("dnsd_etcd_bad_keys") == 2
        log = restarted.log()
        assert "'host' is a scoped address" in log and "'targetstrip' must leave" in log
        assert "Traceback" not in log
    finally:
        restarted.stop()
