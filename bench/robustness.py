"""Robustness: every answer dnsd gives while everything changes at once, checked against the
history of writes, for ``--duration`` seconds (tests/robustness/harness.py).

A real dnsd, a real 3-member etcd, the scripted Engine API, a hosts file and a slow scripted
upstream; writers change etcd names (A, AAAA, TXT, CNAMEs inside and out of the zone, deletions,
TTLs), containers (start, stop, rename, health) and hosts entries; readers ask over UDP and TCP
from four loopback addresses; faults come one after another (etcd leader killed, a member
SIGSTOPped, dnsd cut off etcd, upstream stalled and failing, SIGHUP bursts, the Engine's event
stream cut).  Reports answers checked, violations (answers no state of the writes explains),
the largest staleness seen outside and around faults, and the faults injected.
Exits 1 on any violation.  The suite runs 60 s (tests/robustness); notes quote 600 s.
Usage: scripts/bench robustness [--duration S] [--seed N] [--no-faults] [--bound S]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from robustness.harness import Plan, Run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--bound", type=float, default=1.0, help="staleness allowed (s)")
    args = parser.parse_args()
    plan = Plan(duration_s=args.duration, faults=not args.no_faults, bound_s=args.bound)
    if args.seed is not None:
        plan.seed = args.seed
    print(f"robustness: {args.duration:.0f} s, seed {plan.seed}, bound {args.bound} s", flush=True)
    with Run(plan, Path(tempfile.mkdtemp(prefix="dnsd-robustness-"))).components() as run:
        report = run.run()
    print(report.summary())
    if run.errors:
        print(f"harness errors: {run.errors}")
    return 1 if report.violations or run.errors else 0


if __name__ == "__main__":
    sys.exit(main())
