"""The etcd mirror in process: CPU per changed key and memory at scale.

Feeds ``Mirror`` the way the watch does (batches of 125 puts, siblings under one parent, as a
mass reschedule writes them), then churns single keys at that size and deletes them all again.
Reports µs of CPU per changed key for each phase and the RSS growth.  No etcd, no sockets: this
is the cost the event loop pays per key (run ``bench/cluster.py`` for the whole path).

    .venv/bin/python bench/mirror.py [--keys 100000] [--batch 125]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import time

from dnsd.admission import Admission
from dnsd.records import RecordStore
from dnsd.sources.etcd import Mirror

PREFIX = "/skydns"


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def value(i: int) -> bytes:
    return json.dumps(
        {"host": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "port": 80, "ttl": 30,
         "targetstrip": 1}
    ).encode()  # fmt: skip


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
    args = parser.parse_args()
    store = RecordStore(Admission(["docker."]))
    store.subscribe(lambda names: None)
    mirror = Mirror(store, PREFIX, ["docker."], 30)
    mirror.replace_all([])
    before = rss_mb()
    n, batch = args.keys, args.batch

    def bulk_put() -> None:
        for start in range(0, n, batch):
            mirror.apply([(key(i), value(i), 10) for i in range(start, min(start + batch, n))])

    def churn() -> None:
        rng = random.Random(1)
        for _ in range(2000):
            i = rng.randrange(n)
            mirror.apply([(key(i), value(i + 1), 10)])

    def bulk_delete() -> None:
        for start in range(0, n, batch):
            mirror.apply([(key(i), None, 0) for i in range(start, min(start + batch, n))])

    results = {"bulk put": timed("bulk put (batches)", n, bulk_put)}
    grown = rss_mb() - before
    results["churn"] = timed("churn at full size (one key)", 2000, churn)
    results["bulk delete"] = timed("bulk delete (batches)", n, bulk_delete)
    print(f"RSS growth with {n} keys: {grown:.0f} MB")
    print(json.dumps({"keys": n, "us_per_key": results, "rss_growth_mb": round(grown)}))


if __name__ == "__main__":
    main()
