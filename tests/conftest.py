"""Fixtures: a real dnsd process on loopback, and a scriptable upstream DNS server on 127.0.0.1.

No test ever talks to the machine's own resolver: every dnsd started here forwards only to a
FakeUpstream (or has forwarding off).
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest
from dnslib import NS, QTYPE, RR, SOA, A, DNSRecord

ROOT = Path(__file__).resolve().parent.parent
LOOP_PROBE_SUFFIX = "dnsd-loop.invalid."


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


@pytest.fixture
def dnsd_factory(tmp_path: Path) -> Iterator[object]:
    started: list[Dnsd] = []

    def factory(*args: str, **kw: object) -> Dnsd:
        dnsd = start_dnsd(tmp_path, *args, **kw)  # type: ignore[arg-type]
        started.append(dnsd)
        return dnsd

    yield factory
    for dnsd in started:
        dnsd.stop()


@dataclass
class FakeUpstream:
    """A DNS server on 127.0.0.1 (UDP and TCP) whose behaviour each test scripts.

    mode: "answer" (A 1.2.3.4 for every name, or NXDOMAIN for names starting with "nx"),
    "silent" (never replies), "spoof" (first a reply with a wrong ID, then the right one),
    "truncate" (TC=1 over UDP; the full answer over TCP), "poison" (the answer plus records
    for other names in every section: out of bailiwick).
    """

    mode: str = "answer"
    ttl: int = 300
    address: str = "1.2.3.4"
    answers_per_name: int = 1
    queries: list[tuple[str, str, str]] = field(default_factory=list)  # (proto, name, type)
    port: int = 0
    tls: ssl.SSLContext | None = None  # the TCP listener speaks DNS over TLS

    def start(self) -> FakeUpstream:
        self.port = free_port()
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind(("127.0.0.1", self.port))
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._tcp.bind(("127.0.0.1", self.port))
        self._tcp.listen(16)
        self._running = True
        threading.Thread(target=self._serve_udp, daemon=True).start()
        threading.Thread(target=self._serve_tcp, daemon=True).start()
        return self

    def stop(self) -> None:
        self._running = False
        self._udp.close()
        self._tcp.close()

    def reply_to(self, data: bytes, proto: str) -> DNSRecord:
        request = DNSRecord.parse(data)
        name = str(request.q.qname)
        if not name.endswith(LOOP_PROBE_SUFFIX):  # dnsd's start-up loop check is not counted
            self.queries.append((proto, name.lower(), QTYPE[request.q.qtype]))
        reply = request.reply()
        if name.lower().startswith("nx"):
            reply.header.rcode = 3
            soa = SOA("ns.test.", "admin.test.", (1, 60, 60, 60, 30))
            reply.add_auth(RR("test.", QTYPE.SOA, ttl=self.ttl, rdata=soa))
        elif request.q.qtype == QTYPE.A:
            if self.mode == "poison":
                bad = A("6.6.6.6")
                reply.add_answer(RR("victim.example.", QTYPE.A, ttl=self.ttl, rdata=bad))
                reply.add_auth(RR("example.", QTYPE.NS, ttl=self.ttl, rdata=NS("ns.evil.")))
                reply.add_ar(RR("ns.evil.", QTYPE.A, ttl=self.ttl, rdata=bad))
            for i in range(self.answers_per_name):
                address = self.address if i == 0 else f"10.9.{i // 250}.{i % 250 + 1}"
                reply.add_answer(RR(request.q.qname, QTYPE.A, ttl=self.ttl, rdata=A(address)))
        return reply

    def _serve_udp(self) -> None:
        while self._running:
            try:
                data, addr = self._udp.recvfrom(65535)
            except OSError:
                return
            if self.mode == "silent":
                if not str(DNSRecord.parse(data).q.qname).endswith(LOOP_PROBE_SUFFIX):
                    self.queries.append(("udp", "", ""))
                continue
            reply = self.reply_to(data, "udp")
            if self.mode == "spoof":  # a forged reply (wrong ID, other address) arrives first
                forged = DNSRecord.parse(data).reply()
                forged.header.id = (reply.header.id + 1) % 65536
                forged.add_answer(RR(reply.q.qname, QTYPE.A, ttl=self.ttl, rdata=A("6.6.6.6")))
                self._udp.sendto(bytes(forged.pack()), addr)
                time.sleep(0.05)
            if self.mode == "truncate":
                reply = DNSRecord(reply.header, q=reply.q)
                reply.header.tc = 1
            self._udp.sendto(bytes(reply.pack()), addr)

    def _serve_tcp(self) -> None:
        while self._running:
            try:
                conn, _ = self._tcp.accept()
            except OSError:
                return
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except OSError:  # a client that does not trust us hangs up (ssl.SSLError)
                    conn.close()
                    continue
            with conn:
                try:
                    (length,) = struct.unpack("!H", conn.recv(2))
                    data = b""
                    while len(data) < length:
                        data += conn.recv(length - len(data))
                    packed = bytes(self.reply_to(data, "tcp").pack())
                    conn.sendall(struct.pack("!H", len(packed)) + packed)
                except (OSError, struct.error):
                    pass


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


def rcode(message: dns.message.Message) -> str:
    return dns.rcode.to_text(message.rcode())


@pytest.fixture(scope="session")
def dockerd() -> Iterator[object]:
    """A private Docker Engine for the whole session (see tests/testbed/dockerd.py)."""
    from testbed import dockerd as testbed_dockerd

    reason = testbed_dockerd.available()
    if reason:
        pytest.fail(f"real Docker tests need a private dockerd: {reason}")
    from testbed import certs as testbed_certs

    testbed_dockerd.stop_leftovers()
    certs = testbed_certs.make(Path(tempfile.mkdtemp(prefix="dnsd-certs-")))
    tls_port = free_port()
    tls = [
        "-H", f"tcp://127.0.0.1:{tls_port}", "--tlsverify", "--tlscacert", str(certs.ca),
        "--tlscert", str(certs.server_cert), "--tlskey", str(certs.server_key),
    ]  # fmt: skip
    daemon = testbed_dockerd.Dockerd(tls).start()
    daemon.tls_url = f"tcp://127.0.0.1:{tls_port}"  # type: ignore[attr-defined]
    daemon.certs = certs  # type: ignore[attr-defined]
    daemon.import_busybox()
    yield daemon
    daemon.stop()
