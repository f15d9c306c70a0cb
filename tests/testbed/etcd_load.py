"""Load on a real etcd and a probe on a dnsd, for tests and benchmarks of the mirror at scale:
bulk writes in transactions (as a mass reschedule or a cold start writes them), and a probe
that asks one question at a time at a fixed rate, counting what is lost and how long answers
take."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import dns.exception
import dns.message
import dns.query

TXN_PUTS = 125  # under etcd's 128 operations per transaction


def client(endpoint: str) -> Any:
    import pyetcd

    host, _, port = endpoint.split(",")[0].rpartition(":")
    return pyetcd.client(host=host, port=int(port), timeout=30)


def address(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def service_keys(
    prefix: str, zone: str, count: int, parents: int = 1, node: str = ""
) -> dict[str, bytes]:
    """``count`` keys for ``k<i>.svc<i % parents>.<zone>``, siblings under ``parents`` service
    names: as dnsd publishes them when ``node`` is given (an instance label below the name,
    ``dnsd_node``), else as another SkyDNS writer would (the key is the name)."""
    keys = {}
    for i in range(count):
        value: dict[str, object] = {"host": address(i), "ttl": 30, "targetstrip": 1}
        key = f"{prefix}/{zone}/svc{i % parents}/k{i}"
        if node:
            key += f"/{node}-{i:x}"
            value["dnsd_node"] = node
        keys[key] = json.dumps(value).encode()
    return keys


def bulk_put(endpoint: str, items: dict[str, bytes], per_txn: int = TXN_PUTS) -> float:
    """Writes ``items`` in transactions of ``per_txn`` puts; returns when the last is written
    (time.monotonic())."""
    etcd = client(endpoint)
    pairs = list(items.items())
    try:
        for start in range(0, len(pairs), per_txn):
            chunk = pairs[start : start + per_txn]
            etcd.transaction([], [etcd.transactions.put(k, v) for k, v in chunk], [])
        return time.monotonic()
    finally:
        etcd.close()


def bulk_delete(endpoint: str, keys: list[str], per_txn: int = TXN_PUTS) -> float:
    etcd = client(endpoint)
    try:
        for start in range(0, len(keys), per_txn):
            chunk = keys[start : start + per_txn]
            etcd.transaction([], [etcd.transactions.delete(k) for k in chunk], [])
        return time.monotonic()
    finally:
        etcd.close()


class Probe:
    """Asks ``name`` (or, with ``miss``, a new name under it each time: the event loop's
    path) ``rate`` times a second over UDP; each question waits ``timeout`` at most."""

    def __init__(
        self,
        port: int,
        name: str,
        rate: float = 50,
        timeout: float = 1.0,
        miss: bool = False,
        source: str | None = None,
    ) -> None:
        self.port, self.name, self.rate, self.timeout, self.miss = port, name, rate, timeout, miss
        self.source = source  # the probe's own address (another loopback one), if given
        self.latencies: list[float] = []
        self.lost = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        period = 1 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            qname = f"p{uuid.uuid4().hex[:12]}.{self.name}" if self.miss else self.name
            started = time.monotonic()
            try:
                dns.query.udp(
                    dns.message.make_query(qname, "A"), "127.0.0.1", port=self.port,
                    timeout=self.timeout, source=self.source,
                )  # fmt: skip
                self.latencies.append(time.monotonic() - started)
            except dns.exception.Timeout:
                self.lost += 1
            next_at += period
            self._stop.wait(max(next_at - time.monotonic(), 0))

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(int(len(ordered) * share), len(ordered) - 1)] if ordered else 0.0

    def summary(self) -> str:
        return (
            f"{len(self.latencies)} answered, {self.lost} lost, p50 "
            f"{self.percentile(0.5) * 1000:.1f} ms, p99 {self.percentile(0.99) * 1000:.1f} ms"
        )
