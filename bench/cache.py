"""The packed-answer cache under change, and the miss path at scale.

- churn: dnsd serving 10,000 hosts-file names to dnsperf, steady and then while 100 etcd
  writes per second change other names (each write is a store change); prints both rates and
  their ratio (per-name invalidation keeps the queried names' entries).
- miss: in-process, the resolver path (``QueryHandler.handle`` with no packed-answer cache) for
  local A names with 1,000 and 100,000 names in the store, asking the same number of distinct
  names in both: microseconds per miss and the ratio; and at 100,000 with every name asked
  once (colder CPU caches).
- rss: dnsd's RSS holding 100,000 names (hosts file), after they answer.
Servers on core 0, dnsperf on core 1, loopback only.  Usage: python bench/cache.py [--duration S]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dns.message

# Run as a script, bench/ is on the path; importing run puts tests/ (the testbed) there too.
from run import CLIENT_CORE, Servers, dnsperf, free_port, rss_mb, warm
from testbed import etcd as testbed_etcd

from dnsd.record import Record
from dnsd.records import RecordStore
from dnsd.resolve.acl import Acl
from dnsd.resolve.chain import standard_chain
from dnsd.resolve.local import LocalZone
from dnsd.stats import Stats
from dnsd.wire.query import QueryHandler

CHURN_NAMES = 10_000
CHURN_PER_S = 100
BIG = 100_000


def hosts_file(path: Path, count: int) -> None:
    path.write_text(
        "".join(
            f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1} n{i}.docker\n" for i in range(count)
        )
    )


def churn(endpoint: str, stop: threading.Event, writes: list[int]) -> None:
    import pyetcd

    host, _, port = endpoint.rpartition(":")
    client = pyetcd.client(host=host, port=int(port))
    while not stop.is_set():
        started = time.monotonic()
        for _ in range(10):
            i = writes[0]
            # Other names, each under its own parent (SkyDNS aggregates a subtree per change).
            client.put(f"/skydns/docker/ch{i % 5000}/x", f'{{"host": "10.250.{i % 250}.1"}}')
            writes[0] += 1
        stop.wait(max(0.0, 10 / CHURN_PER_S - (time.monotonic() - started)))


def bench_churn(work: Path, duration: float) -> None:
    hosts = work / "hosts-churn"
    hosts_file(hosts, CHURN_NAMES)
    queries = work / "queries-churn.txt"
    queries.write_text("".join(f"n{i}.docker A\n" for i in range(CHURN_NAMES)))
    # Keep dnsd's core for dnsd: etcd and the writer (this process) go to the client's core,
    # as they would run on other machines or cores in a deployment; etcd's data on tmpfs, so
    # its fsyncs take as little of that core as they can.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    etcd = testbed_etcd.Etcd(1, under=shm).start()
    for member in etcd.members:
        if member.proc is not None:
            subprocess.run(["taskset", "-a", "-p", "-c", CLIENT_CORE, str(member.proc.pid)],
                           check=True, capture_output=True)  # fmt: skip
    os.sched_setaffinity(0, {int(CLIENT_CORE)})
    servers = Servers(work)
    try:
        port = free_port()
        proc = servers.dnsd(port, "--hosts", str(hosts), "--etcd", etcd.endpoints, "--no-forward")
        warm(port, queries)
        steady = dnsperf(port, queries, duration, proc.pid)
        stop, writes = threading.Event(), [0]
        writer = threading.Thread(target=churn, args=(etcd.endpoints.split(",")[0], stop, writes))
        writer.start()
        time.sleep(1.0)
        before = writes[0]
        churned = dnsperf(port, queries, duration, proc.pid)
        rate = (writes[0] - before) / duration
        stop.set()
        writer.join()
        ratio = churned.qps / steady.qps
        print(f"churn: {CHURN_NAMES:,} names, steady {steady.qps:,.0f} q/s, with {rate:.0f} "
              f"store changes/s {churned.qps:,.0f} q/s, ratio {ratio:.2f}; dnsd CPU "
              f"{steady.cpu_us:.2f} -> {churned.cpu_us:.2f} µs per query")  # fmt: skip
    finally:
        servers.stop_all()
        etcd.stop()
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


def miss_timer(count: int, asked: int = 20_000, distinct: int = 1000) -> Callable[[], float]:
    """A measurement of microseconds per miss with ``count`` names in the store, asking
    ``distinct`` of them (spread over the store) in turn: the same working set whatever the
    store's size, so the ratio shows what the store's size costs, not colder CPU caches."""
    store = RecordStore()
    store.replace_owner(
        "static", "hosts", [Record(f"n{i}.docker.", "A", "10.0.0.1", 5) for i in range(count)]
    )
    acl = Acl(["127.0.0.0/8"])
    handler = QueryHandler(standard_chain(LocalZone(store, ["docker."]), None, acl), Stats(), None)
    step = count // distinct
    packets = [
        dns.message.make_query(f"n{i % distinct * step}.docker", "A").to_wire()
        for i in range(asked)
    ]

    def measure() -> float:
        started = time.perf_counter()
        for packet in packets:
            handler.handle(packet, "127.0.0.1", True)
        return (time.perf_counter() - started) / asked * 1e6

    return measure


def miss_us(*timers: Callable[[], float], rounds: int = 5) -> list[float]:
    """The best of ``rounds`` for each timer, taken in turn (no timer gets the quiet minute)."""
    best = [float("inf")] * len(timers)
    for _ in range(rounds):
        for i, timer in enumerate(timers):
            best[i] = min(best[i], timer())
    return best


def bench_rss(work: Path) -> None:
    hosts = work / "hosts-big"
    hosts_file(hosts, BIG)
    servers = Servers(work)
    try:
        port = free_port()
        started = time.monotonic()
        proc = servers.dnsd(port, "--hosts", str(hosts), "--no-forward")
        took = time.monotonic() - started
        print(f"rss: {BIG:,} names: {rss_mb(proc.pid):.1f} MB (up and answering in {took:.1f} s)")
    finally:
        servers.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dnsd-cache-bench-") as tmp:
        work = Path(tmp)
        bench_churn(work, args.duration)
        small, big, cold = miss_us(
            miss_timer(1000), miss_timer(BIG), miss_timer(BIG, distinct=20_000)
        )
        print(f"miss: {small:.1f} µs per miss at 1,000 names, {big:.1f} µs at {BIG:,} "
              f"(ratio {big / small:.2f}); {cold:.1f} µs at {BIG:,} asking 20,000 names "
              "once each")  # fmt: skip
        bench_rss(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
