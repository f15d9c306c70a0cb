"""dnsd as the tests run it: a real ``dnsd serve`` process on loopback, started, waited for and
stopped; ``query`` asks it with dnspython; ``free_port`` and ``eventually`` for everyone (tests,
the other testbed modules, bench/)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
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


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
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

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

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
    with its default, as a user who set nothing gets it)."""
    port = port or free_port()
    argv = [sys.executable, "-m", "dnsd", "serve", "--listen", f"127.0.0.1:{port}", *args]
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
    dnsd = Dnsd(proc, port, log_path)
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
