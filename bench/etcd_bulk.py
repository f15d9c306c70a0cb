"""Bulk etcd changes against a running dnsd: how long until they answer, what serving feels
meanwhile, and dnsd's memory.

For each size (default 20,000 and 100,000 keys, siblings under one parent, written in
transactions of 125 puts as a mass reschedule writes them; as dnsd publishes them, or with
``--foreign`` as another SkyDNS writer would, each key then answering at its parent too): a
fresh dnsd mirroring a real etcd (data on tmpfs), two probes at 50 questions per second (a
cached local name, and new names under it each time: the event loop's path), then the bulk
write.  Reports the seconds from the last write until the last key answers, each probe's
losses and p50/p99, dnsd's CPU seconds for the whole bulk, its RSS before and after, and the
same for deleting them all.

Targets: 20,000 keys answer within 3 s of the last write, 100,000 within 10 s; the
probes lose nothing with p99 <= 50 ms; RSS with 100,000 keys <= 250 MB.

    .venv/bin/python bench/etcd_bulk.py [--sizes 20000,100000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from run import rss_mb  # run.py puts tests/ (the testbed) on the path
from testbed.dnsd import Dnsd, eventually, query, start_dnsd
from testbed.etcd import Etcd
from testbed.etcd_load import Probe, address, bulk_delete, bulk_put, service_keys


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def answers(port: int, name: str) -> list[str]:
    reply = query(port, name, "A")
    return sorted(item.to_text() for rrset in reply.answer for item in rrset)


def one_size(etcd: Etcd, tmp: Path, count: int, node: str) -> dict[str, object]:
    zone, prefix = "bulk", f"/bench{count}"
    (tmp / "hosts").write_text(f"10.9.9.9 probe.{zone}\n")
    server: Dnsd = start_dnsd(
        tmp, "--no-forward", "--zone", zone, "--etcd", etcd.endpoints, "--hosts",
        str(tmp / "hosts"), config=f'[etcd]\nprefix = "{prefix}"\npublish = false\n',
    )  # fmt: skip
    try:
        server.wait_source("etcd", timeout=60)
        pid = server.proc.pid
        result: dict[str, object] = {
            "keys": count, "written_as": "dnsd" if node else "other writer",
            "rss_before_mb": round(rss_mb(pid)),
        }  # fmt: skip
        keys = service_keys(prefix, zone, count, node=node)
        last = f"k{count - 1}.svc0.{zone}"
        for phase in ("put", "delete"):
            cpu = cpu_s(pid)
            with (
                Probe(server.port, f"probe.{zone}") as cached,
                Probe(server.port, f"probe.{zone}", miss=True) as loop,
            ):
                if phase == "put":
                    written = bulk_put(etcd.endpoints, keys)
                    eventually(lambda: answers(server.port, last) != [], timeout=600, interval=0.02)
                else:
                    written = bulk_delete(etcd.endpoints, list(keys))
                    eventually(lambda: answers(server.port, last) == [], timeout=600, interval=0.02)
                settled = time.monotonic() - written
                time.sleep(1)  # the probes see the last of it
            result[phase] = {
                "answered_after_last_write_s": round(settled, 2),
                "dnsd_cpu_s": round(cpu_s(pid) - cpu, 2),
                "cpu_us_per_key": round((cpu_s(pid) - cpu) / count * 1e6, 1),
                "cached_probe": cached.summary(),
                "loop_probe": loop.summary(),
            }
            if phase == "put":
                assert answers(server.port, f"k0.svc0.{zone}") == [address(0)]
                result["rss_with_keys_mb"] = round(rss_mb(pid))
        return result
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="20000,100000")
    parser.add_argument(
        "--foreign", action="store_true",
        help="keys as another SkyDNS writer writes them (default: as dnsd publishes them)",
    )  # fmt: skip
    args = parser.parse_args()
    etcd = Etcd(1, under="/dev/shm").start()
    try:
        for count in (int(size) for size in args.sizes.split(",")):
            with tempfile.TemporaryDirectory(prefix="dnsd-bulk-") as tmp:
                result = one_size(etcd, Path(tmp), count, "" if args.foreign else "bulknode")
            print(json.dumps(result, indent=2), flush=True)
    finally:
        etcd.stop()


if __name__ == "__main__":
    main()
