"""A scriptable DNS server on 127.0.0.1 (UDP, TCP, optionally TLS) standing in for upstream
resolvers: no test ever talks to the machine's own resolver."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dnslib import NS, QTYPE, RR, SOA, A, DNSRecord

from testbed.dnsd import free_port

LOOP_PROBE_SUFFIX = "dnsd-loop.invalid."


@dataclass
class FakeUpstream:
    """A DNS server on 127.0.0.1 (UDP and TCP) whose behaviour each test scripts.

    mode: "answer" (A 1.2.3.4 for every name, or NXDOMAIN for names starting with "nx"),
    "silent" (never replies), "spoof" (first a reply with a wrong ID, then the right one),
    "truncate" (TC=1 over UDP; the full answer over TCP), "poison" (the answer plus records
    for other names in every section: out of bailiwick), "servfail" (SERVFAIL to everything).
    """

    mode: str = "answer"
    ttl: int = 300
    address: str = "1.2.3.4"
    answers_per_name: int = 1
    queries: list[tuple[str, str, str]] = field(default_factory=list)  # (proto, name, type)
    port: int = 0
    tls: ssl.SSLContext | None = None  # the TCP listener speaks DNS over TLS
    # name (lower-case, absolute) -> zone-file lines answered for it, whatever the type asked
    scripted: dict[str, str] = field(default_factory=dict)
    out_of_order: bool = False  # TCP/TLS: two pipelined questions answered second first
    close_after: int = 0  # TCP/TLS: close a connection after answering this many (0: never)
    # TCP/TLS: after answering this many on a connection, answer nothing more on it
    # ("silent") or send half a frame and then nothing ("partial"); 0: never.
    stall_after: int = 0
    stall: str = "silent"
    delay: float = 0.0  # UDP: seconds before each answer (a slow upstream)
    # UDP, answered on a thread of their own (others are not held up): the seconds to wait
    # before answering a name (lower-case, absolute), and a gate every answer waits for.
    delay_of: Callable[[str], float] | None = None
    gate: threading.Event | None = None
    # Per-name failures, whatever the mode: name (lower-case, absolute) -> "servfail" (a
    # SERVFAIL reply), "silent" (no reply, over UDP) or "" (answered as usual).
    broken: Callable[[str], str] | None = None
    tcp_connections: int = 0  # accepted so far
    tcp_answered: int = 0  # TCP/TLS answers sent, dnsd's start-up loop probe included

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
        """Gone at once: the port is closed (a question then gets ICMP port unreachable)."""
        self._running = False
        with contextlib.suppress(OSError):
            self._udp.shutdown(socket.SHUT_RDWR)  # wakes the reader blocked in recvfrom
        self._udp.close()
        self._tcp.close()

    def reply_to(self, data: bytes, proto: str) -> DNSRecord:
        request = DNSRecord.parse(data)
        name = str(request.q.qname)
        if not name.endswith(LOOP_PROBE_SUFFIX):  # dnsd's start-up loop check is not counted
            self.queries.append((proto, name.lower(), QTYPE[request.q.qtype]))
        reply = request.reply()
        if self.mode == "servfail" or self._broken(name) == "servfail":
            reply.header.rcode = 2
            return reply
        if name.lower() in self.scripted:
            for rr in RR.fromZone(self.scripted[name.lower()]):
                reply.add_answer(rr)
        elif name.lower().startswith("nx"):
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

    def _broken(self, name: str) -> str:
        return self.broken(name.lower()) if self.broken is not None else ""

    def _serve_udp(self) -> None:
        while self._running:
            try:
                data, addr = self._udp.recvfrom(65535)
            except OSError:
                return
            if not self._running:
                return
            question = DNSRecord.parse(data).q
            if self.mode == "silent" or self._broken(str(question.qname)) == "silent":
                name = str(question.qname)  # counted, never answered
                if not name.endswith(LOOP_PROBE_SUFFIX):
                    self.queries.append(("udp", name.lower(), QTYPE[question.qtype]))
                continue
            if self.delay_of is not None or self.gate is not None:
                threading.Thread(target=self._answer_later, args=(data, addr), daemon=True).start()
                continue
            reply = self.reply_to(data, "udp")
            if self.delay:
                time.sleep(self.delay)
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

    def _answer_later(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.reply_to(data, "udp")
        if self.gate is not None:
            self.gate.wait()
        if self.delay_of is not None:
            time.sleep(self.delay_of(str(reply.q.qname).lower()))
        with contextlib.suppress(OSError):
            self._udp.sendto(bytes(reply.pack()), addr)

    def _serve_tcp(self) -> None:
        while self._running:
            try:
                conn, _ = self._tcp.accept()
            except OSError:
                return
            self.tcp_connections += 1
            threading.Thread(target=self._serve_connection, args=(conn,), daemon=True).start()

    def _serve_connection(self, conn: socket.socket) -> None:
        """Every question on the connection, in turn (RFC 7766 reuse); with
        ``out_of_order``, two pipelined questions are answered second first."""
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except OSError:  # a client that does not trust us hangs up (ssl.SSLError)
                conn.close()
                return
        held: list[bytes] = []
        answered = 0
        with conn:
            try:
                while self._running:
                    data = _read_message(conn)
                    if data is None:
                        return
                    if self.out_of_order and not held:
                        held.append(data)
                        continue
                    for message in [data, *held]:
                        packed = bytes(self.reply_to(message, "tcp").pack())
                        if self.stall_after and answered >= self.stall_after:
                            if self.stall == "partial" and answered == self.stall_after:
                                conn.sendall(struct.pack("!H", len(packed)) + packed[:5])
                            answered += 1
                            continue
                        conn.sendall(struct.pack("!H", len(packed)) + packed)
                        answered += 1
                        self.tcp_answered += 1
                    held.clear()
                    if self.close_after and answered >= self.close_after:
                        return
            except (OSError, struct.error):
                pass


def _read_message(conn: socket.socket) -> bytes | None:
    """One length-prefixed DNS message from a TCP stream; None when it ends."""
    head = b""
    while len(head) < 2:
        chunk = conn.recv(2 - len(head))
        if not chunk:
            return None
        head += chunk
    (length,) = struct.unpack("!H", head)
    data = b""
    while len(data) < length:
        chunk = conn.recv(length - len(data))
        if not chunk:
            return None
        data += chunk
    return data
