"""dnsd as the tests run it: a real ``dnsd serve`` process on loopback, started, waited for and
stopped; ``query`` asks it with dnspython; ``free_port`` and ``eventually`` for everyone (tests,
the other testbed modules, bench/)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.query

ROOT = Path(__file__).resolve().parents[2]


def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy (returned), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def _ephemeral_ports() -> range:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


_EPHEMERAL = _ephemeral_ports()
_OURS = range(20000, 32000) if _EPHEMERAL.start >= 32000 else range(0)
_PICK = random.Random()  # its own: Hypothesis reseeds the global one for every example


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1, outside the kernel's ephemeral range
    when it can be: a port handed out by ``bind(0)`` can be taken by any outgoing
    connection on the machine before the process it was picked for binds it."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", _PICK.choice(_OURS) if _OURS else 0))
            except OSError:
                continue
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def query(
    port: int,
    name: str,
    rdtype: str = "A",
    tcp: bool = False,
    timeout: float = 2.0,
    source: str | None = None,
    **kw: object,
) -> dns.message.Message:
    """Ask dnsd on 127.0.0.1:port (from ``source``, another loopback address, if given)."""
    message = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    send = dns.query.tcp if tcp else dns.query.udp
    return send(message, "127.0.0.1", port=port, timeout=timeout, source=source)


@dataclass
class Dnsd:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    http_port: int | None = None  # its /ready and /metrics (on unless the test set --http)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _get(self, path: str) -> str:
        assert self.http_port is not None, "this dnsd has no HTTP endpoint"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
                return str(r.read().decode())
        except urllib.error.HTTPError as exc:  # /ready answers 503 until ready
            return str(exc.read().decode())

    def source(self, name: str) -> dict[str, Any]:
        """The source's entry in /ready: its status (ok, degraded, down, absent), the reason
        when not ok, and details; {} if there is no such source."""
        sources: dict[str, dict[str, Any]] = json.loads(self._get("/ready"))["sources"]
        return sources.get(name, {})

    def wait_source(
        self, name: str, status: str = "ok", reason: str = "", timeout: float = 10.0
    ) -> None:
        """Until the source has ``status`` (and a reason containing ``reason``)."""

        def reached() -> bool:
            entry = self.source(name)
            return entry.get("status") == status and reason in entry.get("reason", "")

        eventually(reached, timeout=timeout)

    def metric_total(self, name: str, **labels: str) -> float:
        """The sum of every series of ``name`` with these labels (whatever their others)."""
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in self._get("/metrics").splitlines()
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items())
        )

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when the series does not exist yet)."""
        for line in self._get("/metrics").splitlines():
            if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_dnsd(
    tmp_path: Path,
    *args: str,
    config: str | None = None,
    env: dict[str, str] | None = None,
    port: int | None = None,
    wait: bool = True,
    docker: str | None = None,
) -> Dnsd:
    """Start ``dnsd serve``; Docker is off unless ``docker`` gives the Engine's URL ("": on,
    with its default, as a user who set nothing gets it).  It gets an HTTP endpoint on
    loopback unless the test sets its own, so tests wait on /ready and /metrics, not logs."""
    port = port or free_port()
    argv = [sys.executable, "-m", "dnsd", "serve", "--listen", f"127.0.0.1:{port}", *args]
    http_port = None
    if "--http" in args:  # the test's own endpoint
        http_port = int(args[args.index("--http") + 1].rsplit(":", 1)[1])
    elif "listen" not in (config or "").partition("[http]")[2]:
        http_port = free_port()
        argv += ["--http", f"127.0.0.1:{http_port}"]
    if docker:
        argv += ["--docker-url", docker]
    elif docker is None:
        argv += ["--no-docker"]
    if config is not None:
        path = tmp_path / f"dnsd-{port}.toml"
        path.write_text(config)
        argv += ["--config", str(path)]
    log_path = tmp_path / f"dnsd-{port}.log"
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith("DNSD_") and k != "DOCKER_HOST"
    }
    environment.update(env or {})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=environment)
    dnsd = Dnsd(proc, port, log_path, http_port)
    if wait:
        wait_ready(dnsd)
    return dnsd


def wait_ready(dnsd: Dnsd, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dnsd.proc.poll() is not None:
            raise RuntimeError(f"dnsd exited {dnsd.proc.returncode}:\n{dnsd.log()}")
        if "listening on" in dnsd.log():
            return
        time.sleep(0.05)
    dnsd.stop()
    raise RuntimeError(f"dnsd did not start:\n{dnsd.log()}")
