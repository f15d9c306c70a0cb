"""Soak: dnsd under steady load while everything around it changes, for ``--duration`` seconds.

Load: dnsperf at half the peak rate measured first, a mix of local A (40 %), SRV (15 %),
NXDOMAIN (15 %) and forwarded names (30 %, upstream TTL 2 s so they go upstream again and
again).  Meanwhile: 10 etcd writes per second under the zone (each one a store change), the
hosts file rewritten every 30 s (a reload), and an upstream that stalls for 5 s every minute
(at the run's middle when it is shorter than a minute).  A probe asks a local name 20 times a
second and times each answer.  In each stall, once the forwarded answers have expired, 50
forwarded names asked before it are asked again: how many are still answered (stale,
RFC 8767) within 2 s.  Reports queries sent/answered/lost, probe p50/p99 and losses (and
the probe's p99 inside the stalls), the stall answers, RSS after warm-up and at the end.
Exits 1 if dnsd dies or answers under 90 % of the load.
Only loopback is used; etcd is a private single member (tests/testbed).
Usage: python bench/soak.py [--duration S] (CI runs 30 s; the figures in notes come from 600 s)
"""

from __future__ import annotations

import argparse
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from dnslib import QTYPE, RR, A, DNSRecord

# Run as a script, bench/ is on the path; importing run puts tests/ (the testbed) there too.
from run import UNLIMITED_MISSES, Servers, free_port, rss_mb, run_dnsperf
from testbed import etcd as testbed_etcd

LOCAL_NAMES = 1000
SRV_NAMES = 100
FORWARDED_NAMES = 500
UPSTREAM_TTL_S = 2
STALL_S = 5.0
STALL_EVERY_S = 60.0
RELOAD_EVERY_S = 30.0
CHURN_PER_S = 10
PROBE_PER_S = 20
WARM_UP_S = 5.0


class StallingUpstream:
    """A loopback resolver: A 1.2.3.4 for every name, silent while ``stalled`` is set."""

    def __init__(self) -> None:
        self.port = free_port()
        self.stalled = threading.Event()
        self.answered = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", self.port))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self._sock.recvfrom(4096)
            except OSError:
                return
            if self.stalled.is_set():
                continue
            request = DNSRecord.parse(data)
            reply = request.reply()
            if request.q.qtype == QTYPE.A:
                reply.add_answer(
                    RR(request.q.qname, QTYPE.A, ttl=UPSTREAM_TTL_S, rdata=A("1.2.3.4"))
                )
            self._sock.sendto(reply.pack(), addr)
            self.answered += 1

    def close(self) -> None:
        self._sock.close()


def write_inputs(work: Path) -> tuple[Path, Path, Path]:
    hosts = work / "hosts"
    write_hosts(hosts, 0)
    records = "".join(
        f'[[static.records]]\nname = "_http._tcp.svc{i}"\ntype = "SRV"\nvalue = "10 10 80 web{i}"\n'
        for i in range(SRV_NAMES)
    )
    config = work / "dnsd.toml"
    config.write_text(  # dnsperf is one address: no miss limits (run.UNLIMITED_MISSES)
        f'{UNLIMITED_MISSES}[static]\nhosts = ["{hosts}"]\nwatch_interval = 1.0\n{records}'
    )
    mix = (
        [f"web{i}.docker A" for i in range(LOCAL_NAMES)] * 4
        + [f"_http._tcp.svc{i % SRV_NAMES}.docker SRV" for i in range(1500)]
        + [f"nx{i}.docker A" for i in range(1500)]
        + [f"f{i % FORWARDED_NAMES}.example A" for i in range(3000)]
    )
    random.Random(7).shuffle(mix)
    queries = work / "queries.txt"
    queries.write_text("\n".join(mix) + "\n")
    return config, hosts, queries


def write_hosts(path: Path, generation: int) -> None:
    lines = [f"10.{i // 250}.{i % 250}.{generation % 250 + 1} web{i}" for i in range(LOCAL_NAMES)]
    path.write_text("\n".join(lines) + "\n")


def probe(
    port: int, stop: threading.Event, latencies: list[tuple[float, float]], lost: list[int]
) -> None:
    """(when, seconds) for each answer to a local name, 20 a second."""
    query = DNSRecord.question("web1.docker").pack()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        while not stop.is_set():
            started = time.perf_counter()
            sock.sendto(query, ("127.0.0.1", port))
            try:
                sock.recv(4096)
                latencies.append((started, time.perf_counter() - started))
            except TimeoutError:
                lost[0] += 1
            stop.wait(1 / PROBE_PER_S)


STALL_CHECK_NAMES = 50


def ask_during_stall(port: int, ends_at: float, counts: dict[str, int]) -> None:
    """Forwarded names the load asked before the stall, asked (all at once) once their
    answers have expired; an answer counts only if it comes while the upstream is stalled."""
    time.sleep(UPSTREAM_TTL_S + 0.5)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.2", 0))  # a client of its own, not dnsperf's address
        for i in range(STALL_CHECK_NAMES):
            sock.sendto(DNSRecord.question(f"f{i}.example").pack(), ("127.0.0.1", port))
        pending = STALL_CHECK_NAMES
        while pending and time.perf_counter() < ends_at:
            sock.settimeout(max(ends_at - time.perf_counter(), 0.001))
            try:
                reply = DNSRecord.parse(sock.recv(4096))
            except TimeoutError:
                break
            pending -= 1
            counts["answered" if reply.header.rcode == 0 and reply.rr else "failed"] += 1
        counts["unanswered"] += pending


def churn(client: object, stop: threading.Event, writes: list[int]) -> None:
    while not stop.is_set():
        i = writes[0]
        client.put(f"/skydns/docker/churn/c{i % 200}", f'{{"host": "10.200.{i % 200}.1"}}')  # type: ignore[attr-defined]
        writes[0] += 1
        stop.wait(1 / CHURN_PER_S)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dnsd-soak-"))
    config, hosts, queries = write_inputs(work)
    upstream = StallingUpstream()
    etcd = testbed_etcd.Etcd(1).start()
    servers = Servers(work)
    port = free_port()
    try:
        proc = servers.dnsd(
            port, "--config", str(config), "--etcd", etcd.endpoints, "--no-docker",
            "--upstream", f"127.0.0.1:{upstream.port}",
        )  # fmt: skip
        peak_out = run_dnsperf(port, queries, 5, "-c", "10", "-q", "200")
        peak = float(re.search(r"Queries per second:\s+([\d.]+)", peak_out).group(1))  # type: ignore[union-attr]
        rate = int(peak / 2)
        print(f"peak {peak:,.0f} q/s (mixed); soaking at {rate:,} q/s for {args.duration:.0f} s")
        import pyetcd

        host, _, etcd_port = etcd.endpoints.split(",")[0].rpartition(":")
        client = pyetcd.client(host=host, port=int(etcd_port))
        stop = threading.Event()
        latencies: list[tuple[float, float]] = []
        probe_lost = [0]
        stall_counts = {"answered": 0, "failed": 0, "unanswered": 0}
        stall_windows: list[tuple[float, float]] = []
        writes = [0]
        threads = [
            threading.Thread(target=probe, args=(port, stop, latencies, probe_lost), daemon=True),
            threading.Thread(target=churn, args=(client, stop, writes), daemon=True),
        ]
        load = subprocess.Popen(
            ["taskset", "-c", "1", "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d",
             str(queries), "-l", str(args.duration), "-Q", str(rate), "-c", "10"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        for thread in threads:
            thread.start()
        started = time.monotonic()
        rss: list[tuple[float, float]] = []
        reloads = stalls = 0
        stall_at = min(STALL_EVERY_S, args.duration / 2)
        while load.poll() is None and proc.poll() is None:
            elapsed = time.monotonic() - started
            rss.append((elapsed, rss_mb(proc.pid)))
            if elapsed >= (reloads + 1) * min(RELOAD_EVERY_S, args.duration / 2):
                reloads += 1
                write_hosts(hosts, reloads)
            if elapsed >= stall_at + stalls * STALL_EVERY_S:
                stalls += 1
                upstream.stalled.set()
                now = time.perf_counter()
                stall_windows.append((now, now + STALL_S))
                threading.Timer(STALL_S, upstream.stalled.clear).start()
                threading.Thread(
                    target=ask_during_stall,
                    args=(port, now + STALL_S, stall_counts),
                    daemon=True,
                ).start()
            time.sleep(1.0)
        out = load.communicate()[0]
        stop.set()
        died = proc.poll() is not None
        sent = int(re.search(r"Queries sent:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
        done = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
        in_stall = sorted(d for t, d in latencies if any(a <= t <= b for a, b in stall_windows))
        timings = sorted(d for _, d in latencies)
        warm = [mb for t, mb in rss if t >= WARM_UP_S] or [mb for _, mb in rss]
        growth = (warm[-1] - warm[0]) / warm[0] * 100 if warm else 0.0
        print(f"queries sent {sent:,}, answered {done:,}, lost {sent - done:,} "
              f"({(sent - done) / max(sent, 1) * 100:.3f} %)")  # fmt: skip
        if timings:
            p50 = statistics.median(timings) * 1000
            p99 = timings[int(len(timings) * 0.99) - 1] * 1000
            print(f"probe: {len(timings):,} answered, {probe_lost[0]} lost, "
                  f"p50 {p50:.2f} ms, p99 {p99:.2f} ms")  # fmt: skip
        if in_stall:
            p99_stall = in_stall[max(int(len(in_stall) * 0.99) - 1, 0)] * 1000
            print(f"probe in the stalls: {len(in_stall):,} answered, p99 {p99_stall:.2f} ms")
        print(f"forwarded names asked before a stall, asked in it: {stall_counts['answered']} "
              f"answered (stale), {stall_counts['failed']} SERVFAIL, "
              f"{stall_counts['unanswered']} unanswered while it lasted")  # fmt: skip
        print(f"store changes (etcd writes) {writes[0]:,}, hosts reloads {reloads}, "
              f"upstream stalls {stalls} ({upstream.answered:,} upstream answers)")  # fmt: skip
        print(f"RSS after warm-up {warm[0]:.1f} MB, at end {warm[-1]:.1f} MB, "
              f"max {max(warm):.1f} MB, growth {growth:+.1f} %")  # fmt: skip
        if died:
            print(f"dnsd exited with {proc.returncode}", file=sys.stderr)
            return 1
        return 0 if done >= 0.9 * sent else 1
    finally:
        servers.stop_all()
        etcd.stop()
        upstream.close()


if __name__ == "__main__":
    sys.exit(main())
