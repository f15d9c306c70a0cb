"""Side-by-side benchmark: dnsd vs a peer, same names, same dnsperf query files, one run.

Servers are pinned to core 0 and dnsperf to core 1; each case alternates dnsd and the peer in
three slices of a third of ``--duration`` each and sums them.  Prints, for both servers:
queries/s, server CPU microseconds per query (from /proc), p99 latency at a fixed 5,000
queries/s, and the ratios dnsd/peer; for these mixes: local A, local SRV, A with 10 %
NXDOMAIN, a forwarded name (both forwarding to the same local upstream, warm caches), A with
EDNS, A with an EDNS cookie option (peer: dnsmasq), and A over TCP, 10 connections
pipelining (peer: unbound, with the same names as local data: dnsmasq forks a process per
TCP connection).  Also dnsd's RSS holding 10,000 names.  Only loopback is used.
Usage: python bench/run.py [--duration S]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from testbed.dnsd import free_port  # noqa: E402  (one free_port for tests and benchmarks)

NAMES = 1000
BIG_NAMES = 10_000
LATENCY_QPS = 5000
ROUNDS = 3  # alternating slices per case and server
SERVER_CORE = "0"
CLIENT_CORE = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# dnsperf is one address asking as fast as it can: the dnsd under test has no per-client miss
# limits (flood protection, bench/flood.py), or the misses past them while the caches warm
# would be answered TC=1, then not at all; dnsmasq has none either.
UNLIMITED_MISSES = (
    "[server]\nudp_miss_rate_per_client = 0\nudp_miss_rate_per_network = 0\n"
    "udp_miss_rate_total = 0\n"
)


@dataclass
class Result:
    qps: float
    cpu_us: float
    completed: int


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime + stime, + cutime + cstime: dnsmasq answers TCP in forked children
    return sum(int(field) for field in fields[11:15])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_port(port: int, timeout: float = 10.0) -> None:
    query = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01"
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        while time.monotonic() < deadline:
            sock.sendto(query, ("127.0.0.1", port))
            try:
                sock.recv(512)
                return
            except OSError:
                continue
    raise RuntimeError(f"server on port {port} did not come up")


def run_dnsperf(port: int, queries: Path, duration: float, *options: str) -> str:
    """dnsperf on the client core against 127.0.0.1:port; returns what it printed."""
    command = ["taskset", "-c", CLIENT_CORE, "dnsperf", "-s", "127.0.0.1", "-p", str(port),
               "-d", str(queries), "-l", str(duration), *options]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def dnsperf(port: int, queries: Path, duration: float, pid: int, *options: str) -> Result:
    before = cpu_ticks(pid)
    out = run_dnsperf(port, queries, duration, "-c", "10", "-q", "200", *options)
    ticks = cpu_ticks(pid) - before
    completed = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    cpu_us = ticks / CLK_TCK / max(completed, 1) * 1e6
    if os.environ.get("BENCH_VERBOSE"):
        print(out)
    return Result(qps, cpu_us, completed)


def side_by_side(
    ours: tuple[int, int],
    theirs: tuple[int, int],
    queries: Path,
    duration: float,
    *options: str,
    rounds: int = ROUNDS,
) -> tuple[Result, Result]:
    """Both servers (port, pid) measured in alternating slices of ``duration / rounds``
    seconds, the totals summed: a slower minute of the machine weighs on both alike."""
    slice_s = duration / rounds
    runs: dict[int, list[Result]] = {ours[0]: [], theirs[0]: []}
    for _ in range(rounds):
        for port, pid in (ours, theirs):
            runs[port].append(dnsperf(port, queries, slice_s, pid, *options))

    def total(results: list[Result]) -> Result:
        completed = sum(r.completed for r in results)
        cpu_us = sum(r.cpu_us * r.completed for r in results) / max(completed, 1)
        return Result(sum(r.qps for r in results) / len(results), cpu_us, completed)

    return total(runs[ours[0]]), total(runs[theirs[0]])


def p99_latency_ms(port: int, queries: Path, duration: float) -> float:
    out = run_dnsperf(port, queries, duration, "-Q", str(LATENCY_QPS), "-v")
    latencies = sorted(float(line.split()[-1]) for line in out.splitlines() if line.startswith(">"))
    if not latencies:
        return float("nan")
    return latencies[int(len(latencies) * 0.99) - 1] * 1000


class Servers:
    """Starts and stops the processes of one benchmark run."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], port: int) -> subprocess.Popen[bytes]:
        log = open(self.work / f"server-{port}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(["taskset", "-c", SERVER_CORE, *argv], stdout=log, stderr=log)
        self.procs.append(proc)
        wait_port(port)
        return proc

    def dnsd(self, port: int, *args: str) -> subprocess.Popen[bytes]:
        """dnsd with ``args``; without a ``--config`` of its own, without miss limits."""
        if "--config" not in args:
            unlimited = self.work / "unlimited.toml"
            unlimited.write_text(UNLIMITED_MISSES)
            args = (*args, "--config", str(unlimited))
        argv = [
            sys.executable,
            "-m",
            "dnsd",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--log-level",
            "WARNING",
            *args,
        ]
        return self.start(argv, port)

    def dnsmasq(self, port: int, *args: str) -> subprocess.Popen[bytes]:
        argv = [
            "dnsmasq",
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--port",
            str(port),
            "--listen-address",
            "127.0.0.1",
            "--bind-interfaces",
            "--cache-size=10000",
            "--pid-file",
            "--user=root",
            *args,
        ]
        return self.start(argv, port)

    def unbound(self, port: int, hosts: Path) -> subprocess.Popen[bytes]:
        """unbound answering the names of ``hosts`` as local data, refusing every other name
        (it never asks anyone)."""
        data = "".join(
            f'  local-data: "{name}. 300 IN A {address}"\n'
            for address, name in (line.split() for line in hosts.read_text().splitlines())
        )
        config = self.work / f"unbound-{port}.conf"
        config.write_text(
            f"server:\n  interface: 127.0.0.1@{port}\n  do-ip6: no\n  num-threads: 1\n"
            '  do-daemonize: no\n  chroot: ""\n  username: ""\n  pidfile: ""\n'
            f'  directory: "{self.work}"\n  use-syslog: no\n  verbosity: 0\n'
            "  access-control: 127.0.0.0/8 allow\n  incoming-num-tcp: 256\n"
            '  module-config: "iterator"\n  local-zone: "." refuse\n'
            f'  local-zone: "docker." static\n{data}'
        )  # fmt: skip
        return self.start(["unbound", "-d", "-c", str(config)], port)

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def write_inputs(work: Path) -> dict[str, Path]:
    hosts = work / "hosts"
    hosts.write_text(
        "".join(f"10.{i // 250 % 250}.{i % 250}.1 n{i}.docker\n" for i in range(NAMES))
    )
    big = work / "hosts-big"
    big.write_text(
        "".join(
            f"10.{i // 250 % 250}.{i % 250}.{i // 62500 + 1} b{i}.docker\n"
            for i in range(BIG_NAMES)
        )
    )
    upstream_hosts = work / "hosts-upstream"
    upstream_hosts.write_text(
        "".join(f"192.0.2.{i % 250 + 1} f{i}.example\n" for i in range(NAMES))
    )
    files = {
        "A": "".join(f"n{i}.docker A\n" for i in range(NAMES)),
        "SRV": "".join(f"_http._tcp.n{i}.docker SRV\n" for i in range(NAMES)),
        "NX10": "".join(
            (f"missing{i}.docker A\n" if i % 10 == 0 else f"n{i}.docker A\n") for i in range(NAMES)
        ),
        "FWD": "".join(f"f{i}.example A\n" for i in range(NAMES)),
    }
    paths = {"hosts": hosts, "big": big, "upstream_hosts": upstream_hosts}
    for mix, text in files.items():
        path = work / f"queries-{mix}.txt"
        path.write_text(text)
        paths[mix] = path
    srv_config = work / "dnsd.toml"
    srv_config.write_text(
        UNLIMITED_MISSES
        + '[static]\nhosts = ["hosts"]\n'
        + "".join(
            f'[[static.records]]\nname = "_http._tcp.n{i}"\ntype = "SRV"\nvalue = "10 10 80 n{i}"\n'
            for i in range(NAMES)
        )
    )
    paths["config"] = srv_config
    return paths


def warm(port: int, queries: Path) -> None:
    subprocess.run(
        ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-n", "1"],
        capture_output=True,
        check=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per dnsperf run")
    parser.add_argument("--only", default="", help="comma-separated cases (default: all)")
    args = parser.parse_args()
    for tool in ("dnsperf", "dnsmasq", "unbound", "taskset"):
        if not shutil.which(tool):
            print(f"bench: {tool} is missing (scripts/setup --system installs it)", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="dnsd-bench-") as tmp:
        work = Path(tmp)
        paths = write_inputs(work)
        servers = Servers(work)
        try:
            return run(servers, paths, args.duration, [c for c in args.only.split(",") if c])
        finally:
            servers.stop_all()


def run(servers: Servers, paths: dict[str, Path], duration: float, only: list[str]) -> int:
    upstream = free_port()
    servers.dnsmasq(
        upstream, f"--addn-hosts={paths['upstream_hosts']}", "--local=/example/", "--local-ttl=300"
    )
    dnsd_port, peer_port, srv_peer_port = free_port(), free_port(), free_port()
    dnsd = servers.dnsd(
        dnsd_port, "--config", str(paths["config"]), "--upstream", f"127.0.0.1:{upstream}"
    )
    peer_args = [
        f"--addn-hosts={paths['hosts']}",
        "--local=/docker/",
        f"--server=127.0.0.1#{upstream}",
    ]
    # dnsmasq scans --srv-host entries per query: give it SRV records only for the SRV case.
    peer = servers.dnsmasq(peer_port, *peer_args)
    srv_flags = [f"--srv-host=_http._tcp.n{i}.docker,n{i}.docker,80,10,10" for i in range(NAMES)]
    srv_peer = servers.dnsmasq(srv_peer_port, *peer_args, *srv_flags)
    tcp_peer_port = free_port()
    tcp_peer = servers.unbound(tcp_peer_port, paths["hosts"])
    print(
        f"{'case':<14}{'peer':<9}{'dnsd q/s':>10}{'peer q/s':>10}{'ratio':>8}"
        f"{'dnsd µs/q':>11}{'peer µs/q':>11}{'ratio':>8}"
    )
    # An EDNS cookie option on every query (dnsperf sends the same bytes each time; dnsd's
    # normalised key ignores options, so the cost is that of a fresh cookie per query).
    cookie = ("-e", "-E", "10:0123456789abcdef")
    cases = [("A", "A", ()), ("SRV", "SRV", ()), ("NX10", "NX10", ()), ("FWD", "FWD", ()),
             ("A+EDNS", "A", ("-e",)), ("A+cookie", "A", cookie),
             ("A over TCP", "A", ("-m", "tcp"))]  # fmt: skip
    for mix, queries, options in cases:
        if only and mix not in only:
            continue
        name, their_port, their_pid = "dnsmasq", peer_port, peer.pid
        if mix == "SRV":
            their_port, their_pid = srv_peer_port, srv_peer.pid
        elif "TCP" in mix:
            name, their_port, their_pid = "unbound", tcp_peer_port, tcp_peer.pid
        warm(dnsd_port, paths[queries])
        warm(their_port, paths[queries])
        ours, theirs = side_by_side(
            (dnsd_port, dnsd.pid), (their_port, their_pid), paths[queries], duration, *options
        )
        cpu_ratio = f"{ours.cpu_us / theirs.cpu_us:>8.2f}" if theirs.cpu_us else f"{'n/a':>8}"
        print(
            f"{mix:<14}{name:<9}{ours.qps:>10.0f}{theirs.qps:>10.0f}{ours.qps / theirs.qps:>8.2f}"
            f"{ours.cpu_us:>11.2f}{theirs.cpu_us:>11.2f}{cpu_ratio}",
            flush=True,
        )
    ours_p99 = p99_latency_ms(dnsd_port, paths["A"], min(duration, 5.0))
    theirs_p99 = p99_latency_ms(peer_port, paths["A"], min(duration, 5.0))
    print(f"p99 latency at {LATENCY_QPS} q/s: dnsd {ours_p99:.3f} ms, dnsmasq {theirs_p99:.3f} ms")
    servers.stop_all()
    big_port = free_port()
    big = servers.dnsd(big_port, "--hosts", str(paths["big"]), "--no-forward")
    big_queries = paths["big"].with_suffix(".queries")
    big_queries.write_text("".join(f"b{i}.docker A\n" for i in range(BIG_NAMES)))
    warm(big_port, big_queries)
    big_result = dnsperf(big_port, big_queries, min(duration, 5.0), big.pid)
    print(f"dnsd with {BIG_NAMES} names: RSS {rss_mb(big.pid):.1f} MB, {big_result.qps:.0f} q/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
