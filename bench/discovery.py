"""Docker benchmarks: freshness against a real dockerd, scale with 10,000 synthetic containers.

Freshness (needs root, docker.io, busybox-static): a private dockerd (tests/testbed), dnsd
watching it; for each of N containers, the time from dockerd's start event to dnsd answering
the name, and from the die event to the name being gone (p50, p99).

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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from run import dnsperf, free_port, wait_port  # noqa: E402
from testbed import dockerd as testbed  # noqa: E402
from testbed.fake_engine import FakeEngine, container  # noqa: E402


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


def freshness(count: int) -> None:
    import docker

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
            client = docker.DockerClient(base_url=daemon.url, version="auto")
            events: dict[tuple[str, str], int] = {}
            stream = client.events(decode=True, filters={"type": "container"})

            def record() -> None:
                for event in stream:
                    events[(event.get("Action", ""), event.get("id", ""))] = event["timeNano"]

            threading.Thread(target=record, daemon=True).start()
            boxes = [
                client.containers.create(testbed.IMAGE, ["sleep", "1000"], name=f"fresh{i}")
                for i in range(count)
            ]
            appear: list[float] = []
            vanish: list[float] = []
            for i, box in enumerate(boxes):
                threading.Thread(target=box.start, daemon=True).start()
                seen = poll_until(port, f"fresh{i}.docker", want_answer=True)
                time.sleep(0.02)
                appear.append((seen - events[("start", box.id)]) / 1e6)
            for i, box in enumerate(boxes):
                threading.Thread(target=box.kill, daemon=True).start()
                gone = poll_until(port, f"fresh{i}.docker", want_answer=False)
                time.sleep(0.05)
                vanish.append((gone - events[("die", box.id)]) / 1e6)
            stream.close()
            print(
                f"freshness over {count} containers: start event -> answered "
                f"p50 {statistics.median(appear):.1f} ms, p99 {percentile(appear, 0.99):.1f} ms; "
                f"die event -> gone p50 {statistics.median(vanish):.1f} ms, "
                f"p99 {percentile(vanish, 0.99):.1f} ms"
            )
        finally:
            dnsd.terminate()
            dnsd.wait()
            log.close()
            daemon.stop()


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
    config.write_text(f"[docker]\nresync_interval = {resync_s}\n")
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
    pattern = re.compile(r"docker resync: (\d+) containers, \d+ records, ([\d.]+) ms")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        syncs = pattern.findall(log_path.read_text())
        if len(syncs) >= wanted:
            return [float(ms) for _, ms in syncs]
        time.sleep(0.2)
    raise TimeoutError("dnsd did not resync in time")


def scale_case(count: int, duration: float, work: Path) -> tuple[float, float, float]:
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
        dnsd, port, log_path = start_dnsd(engine, work, 60.0)
        try:
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
        return syncs[0], max(syncs[1:]), result.qps
    finally:
        engine.stop()


def scale(duration: float) -> None:
    with tempfile.TemporaryDirectory(prefix="dnsd-scale-") as tmp:
        work = Path(tmp)
        small = scale_case(1000, duration, work)
        big = scale_case(10_000, duration, work)
    for count, (initial, periodic, qps) in ((1000, small), (10_000, big)):
        print(
            f"{count:>6} containers: initial sync {initial:.0f} ms (list + inspect each), "
            f"periodic resync (worst of 3) {periodic:.0f} ms, {qps:.0f} q/s"
        )
    print(f"queries/s ratio 10,000 / 1,000 containers: {big[2] / small[2]:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=100, help="freshness sample size")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per dnsperf run")
    parser.add_argument("--skip-freshness", action="store_true")
    args = parser.parse_args()
    if not args.skip_freshness:
        freshness(args.containers)
    scale(args.duration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
