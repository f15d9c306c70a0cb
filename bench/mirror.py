"""The etcd mirror in process: CPU per changed key and memory at scale.

Feeds ``Mirror`` the way the watch does (batches of 125 puts, siblings under one parent, as a
mass reschedule writes them), then churns single keys at that size and deletes them all again.
Reports µs of CPU per changed key for each phase and the RSS growth.  No etcd, no sockets: this
is the cost the event loop pays per key (run ``bench/cluster.py`` for the whole path).

    .venv/bin/python bench/mirror.py [--keys 100000] [--batch 125] [--marked]

Keys are written as dnsd publishes them with ``--marked`` (``dnsd_node``: one record each),
else as another writer might (an address and a port: an A and an SRV at the key's name and
at its parent).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import time

from run import free_port as _free_port  # noqa: F401  (puts tests/, the testbed, on the path)
from testbed.mirror import load_all

from dnsd.admission import Admission
from dnsd.heap import Settler
from dnsd.records import RecordStore
from dnsd.sources.etcd_mirror import Change, Mirror

PREFIX = "/skydns"
CHURNED = 20_000  # single-key changes at full size: enough CPU time to read above the noise


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


MARKED = {"dnsd_node": "node1"}  # as dnsd publishes (--marked)
FOREIGN = {"port": 80}  # as another writer might: each key an A and an SRV, at two names


def value(i: int, extra: dict[str, object]) -> bytes:
    host = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
    return json.dumps({"host": host, "ttl": 30, "targetstrip": 1, **extra}).encode()


def key(i: int) -> str:
    return f"{PREFIX}/docker/svc{i % 50}/node{i % 100}-{i:012x}"


def timed(label: str, keys: int, run: object) -> float:
    gc.collect()
    start = time.process_time()
    run()  # type: ignore[operator]
    spent = time.process_time() - start
    per_key = spent / keys * 1e6
    print(f"{label:<34} {keys:>8} keys  {spent:7.2f} s CPU  {per_key:7.1f} µs/key")
    return per_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=125)
    parser.add_argument("--marked", action="store_true", help="keys as dnsd publishes them")
    args = parser.parse_args()
    extra = MARKED if args.marked else FOREIGN
    store = RecordStore(Admission(["docker."]))
    store.subscribe(lambda names: None)
    mirror = Mirror(store, PREFIX, ["docker."], 30)
    load_all(mirror, [])
    heap = Settler()  # as the etcd source does after each slice
    n, batch = args.keys, args.batch

    # The changes are built before the clock starts: etcd hands dnsd bytes, so encoding the
    # JSON is the writer's cost, not the mirror's.
    puts = [
        [(key(i), value(i, extra), 10) for i in range(start, min(start + batch, n))]
        for start in range(0, n, batch)
    ]
    rng = random.Random(1)
    churns = [
        [(key(i), value(i + 1, extra), 10)] for i in (rng.randrange(n) for _ in range(CHURNED))
    ]
    deletes = [[(change[0], None, 0) for change in changes] for changes in puts]
    before = rss_mb()

    def run(batches: list[list[Change]]) -> None:
        for changes in batches:
            mirror.apply(changes)
            heap.changed(len(changes))

    results = {"bulk put": timed("bulk put (batches)", n, lambda: run(puts))}
    grown = rss_mb() - before
    results["churn"] = timed("churn at full size (one key)", CHURNED, lambda: run(churns))
    results["bulk delete"] = timed("bulk delete (batches)", n, lambda: run(deletes))
    print(f"RSS growth with {n} keys: {grown:.0f} MB")
    kind = "marked" if args.marked else "foreign"
    summary = {"keys": n, "kind": kind, "us_per_key": results, "rss_growth_mb": round(grown)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
