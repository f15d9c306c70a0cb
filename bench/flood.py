"""One address floods dnsd with mutated questions (most are misses, over its miss limit):
the highest rate at which a probe from another address, asking new names (the event loop's
path) 50 times a second with a 1 s timeout, loses nothing.  With ``--before TREE`` the same
floods go, in alternating slices, to the dnsd of another checkout (say the commit before a
change), so the two are measured under the same drift of this VM's speed.

Usage: python bench/flood.py [--rates 20000,40000,...] [--seconds 5] [--before PATH]
Prints, per rate and dnsd, packets sent, probe answers, losses and p99; then the highest
rate each absorbed with 0 lost.  Loopback only; the flood runs in its own process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import free_port  # puts tests/ (the testbed) on the path
from testbed import flood
from testbed.etcd_load import Probe

ROOT = Path(__file__).resolve().parent.parent


class Server:
    def __init__(self, tree: Path, label: str) -> None:
        self.label, self.port = label, free_port()
        self.log = tempfile.NamedTemporaryFile(prefix=f"dnsd-flood-{label}-")  # noqa: SIM115
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dnsd", "serve", "--listen", f"127.0.0.1:{self.port}",
             "--no-forward", "--no-docker"],
            cwd=tree, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        time.sleep(2.0)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def slice_once(server: Server, rate: int, seconds: float) -> tuple[int, Probe]:
    sender = subprocess.Popen(
        [sys.executable, flood.__file__, str(server.port), str(rate), str(seconds + 2),
         "127.0.0.2"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(2.0)  # the sender makes its packets first
    with Probe(server.port, "docker", timeout=1.0, miss=True, source="127.1.0.1") as probe:
        time.sleep(seconds)
    sent = int(sender.communicate(timeout=60)[0])
    return sent, probe


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="20000,40000,60000,80000")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--before", type=Path, help="another checkout: its dnsd, alternated")
    args = parser.parse_args()
    servers = [Server(ROOT, "this")]
    if args.before:
        servers.append(Server(args.before.resolve(), "before"))
    absorbed = dict.fromkeys((s.label for s in servers), 0)
    try:
        for rate in (int(r) for r in args.rates.split(",")):
            for server in servers:
                sent, probe = slice_once(server, rate, args.seconds)
                print(f"{server.label:6} rate {rate:6}/s: sent {sent:7}, probe answered "
                      f"{len(probe.latencies):4}, lost {probe.lost:3}, "
                      f"p99 {probe.percentile(0.99) * 1000:6.1f} ms", flush=True)  # fmt: skip
                if probe.lost == 0:
                    absorbed[server.label] = max(absorbed[server.label], rate)
    finally:
        for server in servers:
            server.stop()
    for label, rate in absorbed.items():
        print(f"{label}: highest flood rate with the probe at 0 lost: {rate}/s")
    if args.before and absorbed["before"]:
        print(f"ratio this/before: {absorbed['this'] / absorbed['before']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
