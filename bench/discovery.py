"""Docker benchmarks: freshness against a real dockerd, scale with 10,000 synthetic containers.

Freshness (needs root, docker.io, busybox-static): a private dockerd (tests/testbed), dnsd
watching it; for each of N containers, the time from dockerd's start event to dnsd answering
the name, and from the die event to the name being gone (p50, p99); then N more started at
once (a burst): the spread of dockerd's own start events, and what dnsd adds after them.

Scale: a scripted Engine API (tests/testbed/fake_engine.py) holding 1,000 and then 10,000
containers of the same shape; dnsd's initial sync and periodic resync times (from its DEBUG
log), queries/s over all names with dnsperf (dnsd on core 0, dnsperf on core 1), and the
ratio 10,000 / 1,000.  Usage: python bench/discovery.py [--containers N] [--duration S]
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Run as a script, bench/ is on the path; importing run puts tests/ (the testbed) there too.
from run import UNLIMITED_MISSES, dnsperf, free_port, wait_port
from testbed import dockerd as testbed
from testbed import etcd as testbed_etcd
from testbed.fake_engine import FakeEngine, container


def _query(name: str, ident: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    return (
        ident.to_bytes(2, "big")
        + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        + labels
        + (b"\x00\x00\x01\x00\x01")
    )


def poll_until(port: int, name: str, want_answer: bool, timeout: float = 10.0) -> int:
    """Query every 0.2 ms until the name has (or lacks) an answer; returns time.time_ns()."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.05)
        deadline = time.monotonic() + timeout
        ident = 0
        while time.monotonic() < deadline:
            ident = (ident + 1) % 65536
            sock.sendto(_query(name, ident), ("127.0.0.1", port))
            try:
                reply = sock.recv(4096)
            except OSError:
                continue
            answered = int.from_bytes(reply[6:8], "big") > 0
            if answered == want_answer:
                return time.time_ns()
            time.sleep(0.0002)
    raise TimeoutError(name)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def watch_events(url: str) -> tuple[Any, dict[tuple[str, str], int], Any]:
    """A Docker client, and dockerd's own time (ns) of every container event by (action, id)."""
    import docker

    client = docker.DockerClient(base_url=url, version="auto")
    events: dict[tuple[str, str], int] = {}
    stream = client.events(decode=True, filters={"type": "container"})

    def record() -> None:
        for event in stream:
            events[(event.get("Action", ""), event.get("id", ""))] = event["timeNano"]

    threading.Thread(target=record, daemon=True).start()
    return client, events, stream


def create_boxes(client: Any, prefix: str, count: int) -> list[Any]:
    return [
        client.containers.create(testbed.IMAGE, ["sleep", "1000"], name=f"{prefix}{i}")
        for i in range(count)
    ]


def delays(
    boxes: list[Any], action: str, port: int, prefix: str, events: dict[tuple[str, str], int]
) -> list[float]:
    """For each container in turn: ``start`` (or ``kill``) it, then the milliseconds from
    dockerd's start (or die) event to dnsd on ``port`` answering (or dropping) its name."""
    event_action, want = ("start", True) if action == "start" else ("die", False)
    found = []
    for i, box in enumerate(boxes):
        threading.Thread(target=getattr(box, action), daemon=True).start()
        seen = poll_until(port, f"{prefix}{i}.docker", want_answer=want)
        time.sleep(0.05)  # let the event recorder see the event too
        found.append((seen - events[(event_action, box.id)]) / 1e6)
    return found


def freshness(count: int) -> None:
    reason = testbed.available()
    if reason:
        print(f"freshness: skipped ({reason})")
        return
    testbed.stop_leftovers()
    daemon = testbed.Dockerd().start()
    daemon.import_busybox()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = open(Path(tmp) / "dnsd.log", "wb")  # noqa: SIM115
        dnsd = subprocess.Popen(
            [sys.executable, "-m", "dnsd", "serve", "--listen", f"127.0.0.1:{port}",
             "--no-forward", "--docker-url", daemon.url, "--log-level", "WARNING"],
            stdout=log, stderr=log,
        )  # fmt: skip
        try:
            wait_port(port)
            client, events, stream = watch_events(daemon.url)
            boxes = create_boxes(client, "fresh", count)
            appear = delays(boxes, "start", port, "fresh", events)
            vanish = delays(boxes, "kill", port, "fresh", events)
            print(
                f"freshness over {count} containers: start event -> answered "
                f"p50 {statistics.median(appear):.1f} ms, p99 {percentile(appear, 0.99):.1f} ms; "
                f"die event -> gone p50 {statistics.median(vanish):.1f} ms, "
                f"p99 {percentile(vanish, 0.99):.1f} ms",
                flush=True,
            )
            print(burst(client, port, events, count), flush=True)
            stream.close()
        finally:
            dnsd.terminate()
            dnsd.wait()
            log.close()
            daemon.stop()


def burst(client: Any, port: int, events: dict[tuple[str, str], int], count: int) -> str:
    """``count`` containers started at once (16 ``docker start`` calls at a time, as a
    deployment does): how long dockerd's own start events spread, and what dnsd adds."""
    boxes = create_boxes(client, "burst", count)
    first: list[int] = []
    watcher = threading.Thread(
        target=lambda: first.append(poll_until(port, "burst0.docker", True, timeout=120)),
        daemon=True,
    )
    watcher.start()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda box: box.start(), boxes))
    last_answered = max(
        poll_until(port, f"burst{i}.docker", want_answer=True, timeout=120) for i in range(count)
    )
    watcher.join()
    time.sleep(0.2)  # let the event recorder see the last events
    starts = [events[("start", box.id)] for box in boxes]
    for box in boxes:
        box.kill()
    return (
        f"burst of {count} started at once: dockerd's start events spread over "
        f"{(max(starts) - min(starts)) / 1e6:.0f} ms; dnsd answered the first "
        f"{(first[0] - events[('start', boxes[0].id)]) / 1e6:.1f} ms after its start event, "
        f"and every one {(last_answered - max(starts)) / 1e6:.1f} ms after the last start event"
    )


def synthetic(count: int) -> list[dict[str, Any]]:
    boxes = []
    for i in range(count):
        labels = {"com.docker.compose.service": f"svc{i % 100}", "com.docker.compose.project": "p"}
        ip = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
        boxes.append(container(f"{i:064x}", f"box{i}", ip, labels=labels, ports=("8080/tcp",)))
    return boxes


def start_dnsd(
    engine: FakeEngine, work: Path, resync_s: float
) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    log_path = work / f"dnsd-{port}.log"
    config = work / f"dnsd-{port}.toml"
    config.write_text(f"{UNLIMITED_MISSES}[docker]\nresync_interval = {resync_s}\n")
    with open(log_path, "wb") as log:
        dnsd = subprocess.Popen(
            ["taskset", "-c", "0", sys.executable, "-m", "dnsd", "serve", "--config", str(config),
             "--listen", f"127.0.0.1:{port}", "--no-forward", "--docker-url", engine.url,
             "--log-level", "DEBUG"],
            stdout=log, stderr=log,
        )  # fmt: skip
    wait_port(port)
    return dnsd, port, log_path


def resync_times(log_path: Path, wanted: int) -> list[float]:
    """Durations of the full (inspecting) resyncs, from dnsd's DEBUG log."""
    pattern = re.compile(r"docker resync: (\d+) containers, \d+ records, ([\d.]+) ms \(inspected")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        syncs = pattern.findall(log_path.read_text())
        if len(syncs) >= wanted:
            return [float(ms) for _, ms in syncs]
        time.sleep(0.2)
    raise TimeoutError("dnsd did not resync in time")


def scale_case(count: int, duration: float, work: Path) -> tuple[float, float, float, float]:
    engine = FakeEngine(str(work / f"engine-{count}.sock")).start()
    for attrs in synthetic(count):
        engine.containers[attrs["Id"]] = attrs
    try:
        # One dnsd resyncing every second (sync times), one at the default 60 s (queries/s,
        # so a resync's CPU does not land inside the measurement).
        dnsd, _, log_path = start_dnsd(engine, work, 1.0)
        try:
            syncs = resync_times(log_path, 4)
        finally:
            dnsd.terminate()
            dnsd.wait()
        started_ns = time.time_ns()
        dnsd, port, log_path = start_dnsd(engine, work, 60.0)
        try:
            answerable = (poll_until(port, f"box{count - 1}.docker", True, 60.0) - started_ns) / 1e9
            resync_times(log_path, 1)
            queries = work / f"queries-{count}.txt"
            queries.write_text("".join(f"box{i}.docker A\n" for i in range(count)))
            subprocess.run(
                ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-n", "1"],
                capture_output=True,
                check=True,
            )
            result = dnsperf(port, queries, duration, dnsd.pid)
        finally:
            dnsd.terminate()
            dnsd.wait()
        return syncs[0], max(syncs[1:]), result.qps, answerable
    finally:
        engine.stop()


def scale(duration: float) -> None:
    with tempfile.TemporaryDirectory(prefix="dnsd-scale-") as tmp:
        work = Path(tmp)
        small = scale_case(1000, duration, work)
        big = scale_case(10_000, duration, work)
    for count, (initial, periodic, qps, answerable) in ((1000, small), (10_000, big)):
        print(
            f"{count:>6} containers: every name answerable {answerable:.2f} s after dnsd starts "
            f"(first sync {initial:.0f} ms), periodic resync (worst of 3) {periodic:.0f} ms, "
            f"{qps:.0f} q/s"
        )
    print(f"queries/s ratio 10,000 / 1,000 containers: {big[2] / small[2]:.2f}")


def serve(work: Path, name: str, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    unlimited = work / "unlimited.toml"  # dnsperf is one address: no miss limits
    unlimited.write_text(UNLIMITED_MISSES)
    args = (*args, "--config", str(unlimited))
    log = open(work / f"{name}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "dnsd", "serve", "--listen",
         f"127.0.0.1:{port}", "--no-forward", "--log-level", "WARNING", *args],
        stdout=log, stderr=log,
    )  # fmt: skip
    log.close()
    wait_port(port)
    return proc, port


def all_answered(port: int, names: list[str], want: bool, timeout: float = 120) -> int:
    """time.time_ns() when every name has (or lacks) an answer."""
    pending = list(names)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pending = [n for n in pending if not _answered_once(port, n, want)]
    if pending:
        raise TimeoutError(f"{len(pending)} names still pending")
    return time.time_ns()


def _answered_once(port: int, name: str, want: bool) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        sock.sendto(_query(name, 7), ("127.0.0.1", port))
        try:
            reply = sock.recv(4096)
        except OSError:
            return False
    return (int.from_bytes(reply[6:8], "big") > 0) == want


def propagation(count: int, duration: float) -> None:
    """Host A (dnsd + Docker) publishes through etcd; host B (dnsd, etcd only) answers."""
    reason = testbed.available() or testbed_etcd.available()
    if reason:
        print(f"propagation: skipped ({reason})")
        return
    etcd = testbed_etcd.Etcd(1).start()
    testbed.stop_leftovers()
    daemon = testbed.Dockerd().start()
    daemon.import_busybox()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            a, _ = serve(work, "a", "--docker-url", daemon.url, "--etcd", etcd.endpoints,
                         "--node-id", "hosta")  # fmt: skip
            b, port_b = serve(work, "b", "--no-docker", "--etcd", etcd.endpoints)
            procs += [a, b]
            client, events, stream = watch_events(daemon.url)
            boxes = create_boxes(client, "prop", count)
            appear = delays(boxes, "start", port_b, "prop", events)
            stream.close()
            print(
                f"propagation over {count} containers, start on A -> answered on B: "
                f"p50 {statistics.median(appear):.1f} ms, p99 {percentile(appear, 0.99):.1f} ms"
            )
            for box in boxes:
                box.remove(force=True)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
        daemon.stop()
        etcd.stop()
    bulk(duration)


def bulk(duration: float) -> None:
    """Publish and withdraw 1,000 containers; then 10,000 remote vs local records."""
    etcd = testbed_etcd.Etcd(1).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            engine = FakeEngine(str(work / "engine.sock")).start()
            b, port_b = serve(work, "b", "--no-docker", "--etcd", etcd.endpoints)
            procs.append(b)
            boxes = synthetic(1000)
            for attrs in boxes:
                engine.containers[attrs["Id"]] = attrs
            names = [f"box{i}.docker" for i in range(0, 1000, 10)]
            started = time.time_ns()
            a, _ = serve(work, "a", "--docker-url", engine.url, "--etcd", etcd.endpoints,
                         "--node-id", "hosta")  # fmt: skip
            procs.append(a)
            published = all_answered(port_b, names, True)
            engine.containers.clear()
            withdraw_started = time.time_ns()
            engine.end_streams()  # A reconnects, resyncs, finds none, withdraws all
            withdrawn = all_answered(port_b, names, False)
            print(
                f"1,000 containers: published and answerable on B in "
                f"{(published - started) / 1e6:.0f} ms (from A's start), withdrawn in "
                f"{(withdrawn - withdraw_started) / 1e6:.0f} ms"
            )
            for proc in procs:
                proc.terminate()
                proc.wait()
            procs.clear()
            for attrs in synthetic(10_000):
                engine.containers[attrs["Id"]] = attrs
            b, port_b = serve(work, "b2", "--no-docker", "--etcd", etcd.endpoints)
            a, port_a = serve(work, "a2", "--docker-url", engine.url, "--etcd", etcd.endpoints,
                              "--node-id", "hosta")  # fmt: skip
            procs += [a, b]
            all_answered(port_b, [f"box{i}.docker" for i in range(0, 10_000, 500)], True)
            queries = work / "queries-10k.txt"
            queries.write_text("".join(f"box{i}.docker A\n" for i in range(10_000)))
            for port in (port_a, port_b):
                subprocess.run(
                    ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-n", "1"],
                    capture_output=True,
                    check=True,
                )
            local = dnsperf(port_a, queries, duration, a.pid)
            remote = dnsperf(port_b, queries, duration, b.pid)
            print(
                f"10,000 names: local (Docker) {local.qps:.0f} q/s, remote (etcd mirror) "
                f"{remote.qps:.0f} q/s, ratio {remote.qps / local.qps:.2f}"
            )
            engine.stop()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
        etcd.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=100, help="freshness sample size")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per dnsperf run")
    parser.add_argument("--skip-freshness", action="store_true")
    parser.add_argument("--only", choices=["freshness", "scale", "etcd"])
    args = parser.parse_args()
    if args.only in (None, "freshness") and not args.skip_freshness:
        freshness(args.containers)
    if args.only in (None, "scale"):
        scale(args.duration)
    if args.only in (None, "etcd"):
        propagation(args.containers, args.duration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
