"""UDP listener: a thread per socket reads datagrams with blocking ``recvfrom`` and answers
the ones the packed-answer cache knows; the rest go to the event loop.

The thread's hot path: the exact bytes of the query (minus its ID) looked up in the cache's
``FastTables.exact``, the ID patched in, sent; a query in other letter case or with EDNS
options (a cookie) is looked up by its normalised key in ``FastTables.normalised`` and its
question echoed. No dnslib object, no await, no poll: a blocking read costs one system
call per datagram where a readiness loop costs a read, an ``EAGAIN`` and an ``epoll_wait``
whenever the queue runs dry (measured: 3.6 vs 3.8 µs of CPU per query under dnsperf). Other
cached answers (rotations, per-network answers, forwarded ones due for re-stamping, UDP sizes
not seen yet) come from ``AnswerCache.answer`` on the same thread. What the cache cannot
answer is queued for the event loop, which resolves it (``QueryHandler``); answers that need
upstream I/O become tasks, bounded by ``max_pending`` (beyond that: answered SERVFAIL and
counted). The thread reads the cache without a lock; its changes are made under the cache's
lock (by the event loop, and by this thread putting a re-stamped entry back).

Cache hits are not timed one by one (a clock read per query would cost more than the lookup):
``HitTimer`` shares the listener threads' CPU time among the hits counted since the last
scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial

from dnsd.logs import Throttled
from dnsd.protocol import HEADER_LEN, RCODE_NOERROR, RCODE_SERVFAIL
from dnsd.stats import Durations, Stats
from dnsd.wire.answer_cache import AnswerCache
from dnsd.wire.codec import OPT_FIXED_BYTES, error_response, opt_well_formed, slip, truncated
from dnsd.wire.fair_queue import FairQueue
from dnsd.wire.miss_rate import (
    MISSES_PER_CLIENT_PER_SECOND,
    MISSES_PER_PREFIX_PER_SECOND,
    MISSES_PER_SECOND,
    SHED,
    MissRate,
)
from dnsd.wire.query import QueryHandler
from dnsd.wire.query_log import QueryLog
from dnsd.wire.rrl import DROP, SLIP, ResponseRateLimit
from dnsd.wire.screen import PASS, screened

logger = logging.getLogger(__name__)
throttled = Throttled(logger)

BATCH = 64  # queued misses resolved per event-loop callback (then the loop's other work runs)
# Bytes read per datagram: 479 keeps the bytes object within CPython's small-object allocator
# (512 bytes with its header), about 80 ns cheaper per read than 4096.  The largest ordinary
# query is 384 bytes (a 255-byte name, a cookie, RFC 8467 block padding); a datagram that fills
# the buffer may have been cut, and gets a TC=1 reply: the client asks again over TCP.
READ_BYTES = 479
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
MAX_PENDING = 2048
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)  # Linux's values
IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
IPV6_DONTFRAG = getattr(socket, "IPV6_DONTFRAG", 62)
MAX_QUEUED = 4096  # misses waiting for the event loop; beyond that: SERVFAIL, counted
MAX_QUEUED_PER_CLIENT = 512  # of them from one address (taken round-robin: FairQueue)


def bind_udp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        # Replies are never fragmented (RFC 9715, as BIND does): DF on IPv4, no sender
        # fragments on IPv6; one too big for the path gets TC=1 (``UdpServer._unsent``).  On
        # IPv4 this also spares the kernel an IP ID per reply.
        with contextlib.suppress(OSError):
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_DONTFRAG, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class UdpServer:
    def __init__(
        self,
        sock: socket.socket,
        handler: QueryHandler,
        answer_cache: AnswerCache,
        stats: Stats,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] = time.monotonic,
        rrl: ResponseRateLimit | None = None,
        query_log: QueryLog | None = None,
        misses_per_client: int = MISSES_PER_CLIENT_PER_SECOND,
        misses_per_prefix: int = MISSES_PER_PREFIX_PER_SECOND,
        misses_total: int = MISSES_PER_SECOND,
    ) -> None:
        self._rrl = rrl
        self._miss_rate = MissRate(misses_per_client, misses_per_prefix, misses_total)
        self._rrl_lock = threading.Lock()  # the limiter is asked from the thread and the loop
        self._query_log = query_log
        self._sock = sock
        self._handler = handler
        self._cache = answer_cache
        self._stats = stats
        self._max_pending = max_pending
        self._clock = clock
        self._pending: set[asyncio.Task[bytes | None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queued = FairQueue(MAX_QUEUED, MAX_QUEUED_PER_CLIENT)
        self._wake_scheduled = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return host, port

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock.setblocking(True)  # no timeout either: a timeout makes every read poll first
        plain = self._rrl is None and self._query_log is None
        serve = self._serve if plain else self._serve_limited
        host, port = self.address
        self._thread = threading.Thread(target=self._run, args=(serve,), daemon=True,
                                        name=f"udp {host}:{port}")  # fmt: skip
        self._thread.start()

    def cpu_seconds(self) -> float:
        """CPU time the listener thread has used (0 before it starts or after it ends)."""
        if not self.serving or self._thread is None or self._thread.ident is None:
            return 0.0
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(self._thread.ident))
        except OSError:  # ended in between
            return 0.0

    @property
    def serving(self) -> bool:
        """The listener thread is running (/ready is false once it has died)."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self, serve: Callable[[], None]) -> None:
        try:
            serve()
        except Exception:  # a bug: say so once; /ready turns false, TCP keeps answering
            logger.exception("the udp listener on %s stopped", self.address)

    def _serve(self) -> None:
        recvfrom, sendto = self._sock.recvfrom, self._sock.sendto
        fast, normalised = self._cache.tables.exact.get, self._cache.tables.normalised.get
        answer, clock = self._cache.answer, self._clock
        slot = self._cache.listener_slot()  # this thread's hit counts: none lost to another's
        shed, shedding, drop = self._miss_rate.shed, self._miss_rate.shedding, self._stats.drop
        while True:
            try:
                data, addr = recvfrom(READ_BYTES)
            except OSError as exc:  # e.g. an ICMP error queued on the socket
                if self._stopping:
                    return
                logger.debug("udp receive error: %s", exc)
                continue
            # The fast tables, inline: a method call would cost more than the lookup.
            hit = fast(data[2:])
            if hit is not None:
                tail, cell, allowed = hit
                if allowed is None or allowed(addr[0]):
                    cell[slot] += 1
                    try:
                        sendto(data[:2] + tail, addr)
                    except OSError as exc:
                        self._unsent(exc, data[:2] + tail, addr)
                    continue
            if shed and addr[0] in shed and shedding(addr[0], clock()):
                drop(SHED)  # a flooding address: not even looked up
                continue
            qend = data.find(b"\x00", HEADER_LEN) + 5
            found = normalised(data[2:qend].lower() + data[qend : qend + OPT_FIXED_BYTES])
            if found is not None and (len(data) == qend or opt_well_formed(data, qend)):
                head, rest, cell, allowed = found
                if allowed is None or allowed(addr[0]):
                    cell[slot] += 1
                    reply = data[:2] + head + data[HEADER_LEN:qend] + rest
                    try:
                        sendto(reply, addr)
                    except OSError as exc:
                        self._unsent(exc, reply, addr)
                    continue
            if not data and self._stopping:
                return  # stop_reading's shutdown woke the read: nothing is queued
            try:
                response = answer(data, addr[0], clock(), slot)
            except Exception as exc:  # a bug: the event loop answers this one
                throttled.warning("cache", "cached answer for %s failed: %r", addr[0], exc)
                response = None
            if response is None:
                self._queue(data, addr)
                continue
            try:
                sendto(response, addr)
            except OSError as exc:
                self._unsent(exc, response, addr)

    def _serve_limited(self) -> None:
        """``_serve`` with response rate limiting and/or the query log (a separate loop, so
        the default hot path pays nothing for them)."""
        query_log = self._query_log
        recvfrom, answer, clock = self._sock.recvfrom, self._cache.answer, self._clock
        slot = self._cache.listener_slot()
        shed, shedding = self._miss_rate.shed, self._miss_rate.shedding
        while True:
            try:
                data, addr = recvfrom(READ_BYTES)
            except OSError as exc:
                if self._stopping:
                    return
                logger.debug("udp receive error: %s", exc)
                continue
            if not data and self._stopping:
                return
            if shed and addr[0] in shed and shedding(addr[0], clock()):
                self._stats.drop(SHED)
                continue
            started = query_log.clock() if query_log is not None else 0.0
            try:
                response = answer(data, addr[0], clock(), slot)
            except Exception as exc:  # a bug: the event loop answers this one
                throttled.warning("cache", "cached answer for %s failed: %r", addr[0], exc)
                response = None
            if response is None:
                self._queue(data, addr)
                continue
            if query_log is not None:
                query_log.log(addr[0], data, response, "cache", started)
            self._send(addr, response)

    def _queue(self, data: bytes, addr: tuple[str, int]) -> None:
        """Hand a miss to the event loop (called on the listener thread); what is not a
        question to resolve is answered or dropped here (``dnsd.wire.screen``)."""
        over = self._miss_rate.over(addr[0], self._clock())
        if over is not None:  # "ask again over TCP", from the packet's bytes: no parsing
            self._stats.drop(over)
            if over == SHED:
                return  # a flood: past its TC replies, no reply at all
            reply = slip(data)
            if reply is not None:
                self._send(addr, reply)
            return
        verdict = screened(data, self._stats)
        if verdict != PASS:
            if verdict is not None:
                self._send(addr, verdict)
            return
        if len(data) >= READ_BYTES:  # perhaps cut short by the read: ask for TCP
            self._stats.drop("query too long for udp (TC sent)")
            reply = error_response(data, RCODE_NOERROR, echo_question=True)
            if reply is not None:
                self._send(addr, truncated(reply))
            return
        refused = self._queued.put(data, addr)
        if refused is not None:  # the loop is far behind: answer now, count it
            self._busy(data, addr, refused)
            return
        if not self._wake_scheduled:
            self._wake_scheduled = True
            assert self._loop is not None
            with contextlib.suppress(RuntimeError):  # the loop has closed: shutting down
                self._loop.call_soon_threadsafe(self._resolve_queued)

    def _resolve_queued(self) -> None:
        """Resolve up to ``BATCH`` queued misses, a client at a time (on the event loop);
        more: come back later."""
        self._wake_scheduled = False
        queued = self._queued
        for _ in range(BATCH):
            item = queued.take()
            if item is None:
                return
            self._slow(*item)
        if len(queued) and not self._wake_scheduled:
            self._wake_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._resolve_queued)

    def _slow(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            result = self._handler.handle(data, addr[0], udp=True)
        except Exception as exc:  # a bug: still answer, and never a traceback per packet
            throttled.warning("handler", "query from %s failed: %r", addr[0], exc)
            self._stats.drop("handler error")
            result = error_response(data, RCODE_SERVFAIL, echo_question=True)
        if result is None:
            return
        if isinstance(result, bytes):
            self._send(addr, result)
            return
        if len(self._pending) >= self._max_pending:
            result.close()
            self._busy(data, addr, "too many pending")
            return
        assert self._loop is not None
        task = self._loop.create_task(result)
        self._pending.add(task)
        task.add_done_callback(partial(self._finished, addr))

    def _busy(self, data: bytes, addr: tuple[str, int], reason: str) -> None:
        """Over a bound: counted, and still answered (SERVFAIL)."""
        self._stats.drop(reason)
        busy = error_response(data, RCODE_SERVFAIL, echo_question=True)
        if busy is not None:
            self._send(addr, busy)

    def _finished(self, addr: tuple[str, int], task: asyncio.Task[bytes | None]) -> None:
        self._pending.discard(task)
        if task.cancelled() or task.exception() is not None:
            return
        response = task.result()
        if response is not None:
            self._send(addr, response)

    def _send(self, addr: tuple[str, int], response: bytes) -> None:
        if self._rrl is not None:
            with self._rrl_lock:
                verdict = self._rrl.verdict(addr[0], self._clock())
            if verdict == DROP:
                return
            if verdict == SLIP:
                response = truncated(response)
        try:
            self._sock.sendto(response, addr)
        except OSError as exc:
            self._unsent(exc, response, addr)

    def _unsent(self, exc: OSError, response: bytes, addr: tuple[str, int]) -> None:
        """A reply the kernel refused.  Too big for the path without fragments (replies
        carry DF, RFC 9715): send TC=1 instead, so the client asks again over TCP."""
        if exc.errno == errno.EMSGSIZE and len(response) > HEADER_LEN:
            self._stats.drop("reply too big for the path (TC sent)")
            with contextlib.suppress(OSError):
                self._sock.sendto(truncated(response), addr)
            return
        self._stats.drop("send failed")

    def stop_reading(self) -> None:
        """Stop taking new datagrams: the thread answers what is already queued, then ends."""
        self._stopping = True
        # On Linux, shutting down an unconnected UDP socket wakes a blocked recvfrom (it
        # returns b"" once the queue is empty), even though the call reports ENOTCONN.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RD)

    async def drain(self, timeout_s: float) -> None:
        """Let the thread finish and queries already upstream finish (up to ``timeout_s``),
        cancel the rest, close."""
        deadline = time.monotonic() + timeout_s
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, timeout_s)
        self._resolve_queued_all()
        if self._pending:
            remaining = max(deadline - time.monotonic(), 0.0)
            _, late = await asyncio.wait(set(self._pending), timeout=remaining)
            for task in late:
                task.cancel()
        self._sock.close()

    def _resolve_queued_all(self) -> None:
        while (item := self._queued.take()) is not None:
            self._slow(*item)


class HitTimer:
    """Times cache hits without a clock read per query: at each scrape, the listener threads'
    CPU time since the last one is shared among the hits counted since (one observation per
    scrape, every hit counted)."""

    def __init__(
        self,
        hits: Callable[[], int],
        servers: Iterable[UdpServer],
        durations: Durations,
    ) -> None:
        self._hits = hits
        self._servers = servers
        self._durations = durations
        self._last_hits = 0
        self._last_cpu: dict[int, float] = {}

    def account(self) -> None:
        hits = self._hits()
        new_hits = hits - self._last_hits
        spent = 0.0
        for server in self._servers:
            cpu = server.cpu_seconds()
            spent += max(cpu - self._last_cpu.get(id(server), 0.0), 0.0)
            self._last_cpu[id(server)] = cpu
        if new_hits > 0:
            self._durations.observe(spent / new_hits, new_hits)
        self._last_hits = hits
