"""A cluster on one machine: 20 dnsd "hosts" sharing a 3-member etcd, each fed by its own
scripted Engine API (tests/testbed/fake_engine.py) with 200 containers.  Run by hand (a few
minutes; not part of scripts/test):

    .venv/bin/python bench/cluster.py [--hosts 20] [--containers 200]

Each host is a dnsd on its own port with its own node ID; the last host reaches etcd through
TCP proxies that can be cut like a network partition.  Reported:

- cold start: every dnsd started at once, until every host holds every key (all names);
- propagation: a container started, then stopped, on one host, until every other host
  answers it (then NXDOMAIN): p50/p99 over all samples (target p99 <= 300 ms);
- mass reschedule: 1,000 containers start at once on host A (until the first, then all, are
  answered by every host), then leave host A and start on host B with new addresses, until
  every host answers every one of them with its new address;
- leader killed during churn: containers start and stop on random hosts while the etcd
  leader is killed; then every host must converge on the final set (no update lost);
- one host cut off from etcd: its names leave every other host within the lease TTL, it keeps
  answering what it knew; after the cut heals everyone converges (target 5 s);
- RSS per dnsd.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
from run import rss_mb  # run.py puts tests/ (the testbed) on the path
from testbed.dnsd import Dnsd, start_dnsd, wait_ready
from testbed.etcd import Etcd
from testbed.etcd_load import client
from testbed.fake_engine import FakeEngine, container
from testbed.tcp_proxy import TcpProxy

ZONE = "cluster"
PHASES = ("cold_start", "rss_after_start", "propagation", "mass_reschedule",
          "leader_killed_during_churn", "cut_off", "rss_at_end")  # fmt: skip
LEASE_TTL_S = 5


@dataclass
class Host:
    index: int
    engine: FakeEngine
    dnsd: Dnsd
    proxies: list[TcpProxy]

    @property
    def node(self) -> str:
        return f"h{self.index}"


def ask(port: int, name: str, timeout: float = 1.0) -> tuple[str, list[str]]:
    try:
        reply = dns.query.udp(
            dns.message.make_query(f"{name}.{ZONE}", "A"), "127.0.0.1", port=port,
            timeout=timeout,
        )  # fmt: skip
    except Exception:
        return "TIMEOUT", []
    return dns.rcode.to_text(reply.rcode()), sorted(r.to_text() for s in reply.answer for r in s)


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> float | None:
    """Seconds until ``check`` holds, or None after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(interval)
    return None


def cid(tag: str) -> str:
    return (tag.encode().hex() * 8)[:64]


def start_container(engine: FakeEngine, name: str, ip: str) -> None:
    key = cid(name)
    engine.containers[key] = container(key, name, ip)
    engine.emit("start", key)


def stop_container(engine: FakeEngine, name: str) -> None:
    key = cid(name)
    engine.containers.pop(key, None)
    engine.emit("die", key)
    engine.emit("destroy", key)


class Cluster:
    def __init__(self, hosts: int, containers: int, tmp: Path) -> None:
        self.tmp = tmp
        self.etcd = Etcd(3, under="/dev/shm").start()
        self.count = containers
        self.hosts: list[Host] = []
        config = tmp / "dnsd.toml"
        config.write_text(f"[etcd]\nlease_ttl = {LEASE_TTL_S}\n")
        for index in range(hosts):
            engine = FakeEngine(str(tmp / f"h{index}.sock")).start()
            for j in range(containers):
                key = cid(f"c{j}-h{index}")
                engine.containers[key] = container(key, f"c{j}-h{index}", self.ip(index, j))
            proxies: list[TcpProxy] = []
            endpoints = self.etcd.endpoints
            if index == hosts - 1:  # the host that will be cut off
                proxies = [TcpProxy("127.0.0.1", m.client_port) for m in self.etcd.members]
                endpoints = ",".join(p.endpoint for p in proxies)
            server = start_dnsd(
                tmp, "--no-forward", "--zone", ZONE, "--etcd", endpoints, "--node-id",
                f"h{index}", "--config", str(config), docker=engine.url, wait=False,
            )  # fmt: skip
            self.hosts.append(Host(index, engine, server, proxies))
        self.started = time.monotonic()

    @staticmethod
    def ip(host: int, j: int) -> str:
        return f"10.{100 + host}.{j // 250}.{j % 250 + 1}"

    def etcd_keys(self) -> int:
        writer = client(self.etcd.endpoints)
        try:
            return int(writer.get_prefix_response("/skydns/", count_only=True).count)
        finally:
            writer.close()

    def stop(self) -> None:
        for host in self.hosts:
            host.dnsd.stop()
            host.engine.stop()
            for proxy in host.proxies:
                proxy.close()
        self.etcd.stop()


def cold_start(cluster: Cluster) -> dict[str, Any]:
    for host in cluster.hosts:
        wait_ready(host.dnsd, timeout=120)
    want = len(cluster.hosts) * cluster.count  # a key per container name

    def everyone_has_all() -> bool:
        keys = cluster.etcd_keys()
        if keys < want:
            return False
        return all(h.dnsd.metric("dnsd_records", source="etcd") >= keys for h in cluster.hosts)

    took = wait_for(everyone_has_all, timeout=600, interval=0.5)
    since_start = time.monotonic() - cluster.started
    rng = random.Random(1)
    wrong = 0
    for host in cluster.hosts:
        for _ in range(25):
            i, j = rng.randrange(len(cluster.hosts)), rng.randrange(cluster.count)
            if ask(host.dnsd.port, f"c{j}-h{i}")[1] != [cluster.ip(i, j)]:
                wrong += 1
    return {"every_host_has_every_name_s": round(since_start, 1) if took is not None else None,
            "names": len(cluster.hosts) * cluster.count, "sampled_wrong": wrong}  # fmt: skip


def propagation(cluster: Cluster, samples: int) -> dict[str, Any]:
    rng = random.Random(2)
    delays: dict[str, list[float]] = {"start": [], "stop": []}
    missed = 0
    for k in range(samples):
        source = rng.choice(cluster.hosts)
        name = f"prop{k}"
        for phase in ("start", "stop"):
            others = [h for h in cluster.hosts if h is not source]
            seen: dict[int, float] = {}
            began = time.monotonic()
            if phase == "start":
                start_container(source.engine, name, f"10.99.{k // 250}.{k % 250 + 1}")
            else:
                stop_container(source.engine, name)

            threads = [
                threading.Thread(target=_watch, args=(h, name, phase, began, seen)) for h in others
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            delays[phase] += seen.values()
            missed += len(others) - len(seen)
    result: dict[str, Any] = {"samples": samples, "missed": missed}
    for phase, values in delays.items():
        values.sort()
        result[phase] = {
            "p50_ms": round(statistics.median(values) * 1000),
            "p99_ms": round(values[min(int(len(values) * 0.99), len(values) - 1)] * 1000),
            "max_ms": round(values[-1] * 1000),
        }
    return result


def _watch(host: Host, name: str, phase: str, began: float, seen: dict[int, float]) -> None:
    """Until ``host`` answers ``name`` (phase start) or says NXDOMAIN (stop); the delay."""
    while time.monotonic() - began < 10:
        rcode, found = ask(host.dnsd.port, name)
        if (phase == "start" and found) or (phase == "stop" and rcode == "NXDOMAIN"):
            seen[host.index] = time.monotonic() - began
            return
        time.sleep(0.01)


def reschedule(cluster: Cluster, moved: int) -> dict[str, Any]:
    a, b = cluster.hosts[0], cluster.hosts[1]
    names = [f"m{j}" for j in range(moved)]
    sample = [*random.Random(3).sample(names, 20), names[-1]]

    def everyone(answer: Callable[[int], list[str]]) -> Callable[[], bool]:
        return lambda: all(
            ask(h.dnsd.port, name)[1] == answer(int(name[1:]))
            for h in cluster.hosts
            for name in sample
        )

    def old(j: int) -> list[str]:
        return [f"10.98.{j // 250}.{j % 250 + 1}"]

    def new(j: int) -> list[str]:
        return [f"10.97.{j // 250}.{j % 250 + 1}"]

    def first_everywhere(answer: list[str]) -> bool:
        return all(ask(h.dnsd.port, names[0])[1] == answer for h in cluster.hosts)

    began = time.monotonic()
    for j, name in enumerate(names):
        start_container(a.engine, name, old(j)[0])
    first = wait_for(lambda: first_everywhere(old(0)), timeout=120, interval=0.02)
    arrived = wait_for(everyone(old), timeout=120, interval=0.2)
    arrived = arrived and (time.monotonic() - began)
    began = time.monotonic()
    for j, name in enumerate(names):
        stop_container(a.engine, name)
        start_container(b.engine, name, new(j)[0])
    issued = time.monotonic() - began
    first_moved = wait_for(lambda: first_everywhere(new(0)), timeout=120, interval=0.02)
    first_moved = first_moved and (time.monotonic() - began)
    agreed = wait_for(everyone(new), timeout=120, interval=0.1)
    agreed = agreed and (time.monotonic() - began)
    wrong = sum(
        ask(h.dnsd.port, name)[1] != new(int(name[1:]))
        for h in cluster.hosts
        for name in names[:: max(len(names) // 100, 1)]
    )
    return {"containers": moved,
            "first_of_burst_everywhere_s": first and round(first, 2),
            "all_arrived_everywhere_s": arrived and round(arrived, 2),
            "first_moved_everywhere_s": first_moved and round(first_moved, 2),
            "every_host_agrees_s": agreed and round(agreed, 2),
            "events_issued_s": round(issued, 2), "checked_wrong_after": wrong}  # fmt: skip


def leader_killed_during_churn(cluster: Cluster, seconds: float) -> dict[str, Any]:
    rng = random.Random(4)
    running: dict[str, tuple[Host, str]] = {}
    changes = 0
    killed = None
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        if killed is None and time.monotonic() - began > seconds / 3:
            killed = cluster.etcd.leader()
            killed.kill()
        name = f"churn{rng.randrange(200)}"
        if name in running:
            host, _ = running.pop(name)
            stop_container(host.engine, name)
        else:
            host = rng.choice(cluster.hosts[:-1])
            ip = f"10.96.{rng.randrange(250)}.{rng.randrange(1, 250)}"
            start_container(host.engine, name, ip)
            running[name] = (host, ip)
        changes += 1
        time.sleep(0.02)

    def converged() -> bool:
        for h in cluster.hosts[::3]:
            for k in range(200):
                name = f"churn{k}"
                want = [running[name][1]] if name in running else []
                if ask(h.dnsd.port, name)[1] != want:
                    return False
        return True

    took = wait_for(converged, timeout=60, interval=0.5)
    if killed is not None:
        cluster.etcd.restart(killed)
    return {"changes": changes, "leader_killed": killed.name if killed else None,
            "converged_after_churn_s": took and round(took, 2),
            "converged": took is not None, "final_running": len(running)}  # fmt: skip


def cut_off(cluster: Cluster) -> dict[str, Any]:
    cut, other = cluster.hosts[-1], cluster.hosts[0]
    own = [f"c{j}-h{cut.index}" for j in range(0, cluster.count, max(cluster.count // 10, 1))]
    remote = [f"c{j}-h{other.index}" for j in range(5)]
    for proxy in cut.proxies:
        proxy.partition()
    began = time.monotonic()

    def gone_everywhere() -> bool:
        return all(
            ask(h.dnsd.port, name)[0] == "NXDOMAIN" for h in cluster.hosts[:-1] for name in own
        )

    gone = wait_for(gone_everywhere, timeout=60, interval=0.2)
    keeps_own = all(ask(cut.dnsd.port, name)[1] for name in own)
    keeps_remote = all(ask(cut.dnsd.port, name)[1] for name in remote)
    start_container(other.engine, "during-cut", "10.95.0.1")
    time.sleep(1)
    cut_for = time.monotonic() - began
    for proxy in cut.proxies:
        proxy.heal()
    healed = time.monotonic()

    def converged() -> bool:
        back = all(ask(h.dnsd.port, name)[1] for h in cluster.hosts for name in own)
        return back and ask(cut.dnsd.port, "during-cut")[1] == ["10.95.0.1"]

    took = wait_for(converged, timeout=60, interval=0.1)
    return {"lease_ttl_s": LEASE_TTL_S, "names_gone_everywhere_s": gone and round(gone, 2),
            "cut_host_kept_own_names": keeps_own, "cut_host_kept_remote_names": keeps_remote,
            "cut_s": round(cut_for, 1), "converged_after_heal_s": took and round(took, 2),
            "healed_at": round(healed - began, 1)}  # fmt: skip


def memory(cluster: Cluster) -> dict[str, Any]:
    values = sorted(rss_mb(h.dnsd.proc.pid) for h in cluster.hosts)
    return {"min_mb": round(values[0]), "median_mb": round(statistics.median(values)),
            "max_mb": round(values[-1])}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--containers", type=int, default=200)
    parser.add_argument("--samples", type=int, default=15, help="propagation samples")
    parser.add_argument("--moved", type=int, default=1000, help="mass reschedule size")
    parser.add_argument(
        "--phases", default=",".join(PHASES),
        help="comma-separated phases to run (cold_start always runs first)",
    )  # fmt: skip
    args = parser.parse_args()
    began = time.monotonic()

    def say(text: str) -> None:  # a line per phase as it goes: a run takes minutes
        print(f"[{time.monotonic() - began:6.1f} s] {text}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="dnsd-cluster-") as tmp:
        say(f"starting a 3-member etcd and {args.hosts} dnsd hosts with scripted Engines")
        cluster = Cluster(args.hosts, args.containers, Path(tmp))
        say("started")
        report: dict[str, Any] = {"hosts": args.hosts, "containers_per_host": args.containers}
        try:
            wanted = {"cold_start", *args.phases.split(",")}
            for label, step in (
                ("cold_start", lambda: cold_start(cluster)),
                ("rss_after_start", lambda: memory(cluster)),
                ("propagation", lambda: propagation(cluster, args.samples)),
                ("mass_reschedule", lambda: reschedule(cluster, args.moved)),
                ("leader_killed_during_churn", lambda: leader_killed_during_churn(cluster, 9)),
                ("cut_off", lambda: cut_off(cluster)),
                ("rss_at_end", lambda: memory(cluster)),
            ):
                if label not in wanted:
                    continue
                say(f"{label}: running")
                report[label] = step()
                print(label, json.dumps(report[label]), flush=True)
                say(f"{label}: done")
        finally:
            cluster.stop()
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
