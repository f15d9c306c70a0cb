"""UDP listener: a raw non-blocking socket read in batches from the event loop's reader callback.

Per readiness callback it reads up to ``BATCH`` datagrams; each is answered from the packed-
answer cache when possible (no await, no dnslib), otherwise handed to ``QueryHandler``. Cache
hits are timed per run, not per query: each run of consecutive hits in a batch adds its time,
shared among its queries, to ``Stats.durations`` (a miss ends a run and times itself), so every
hit is counted for one clock read per run. Answers that need upstream I/O become tasks, bounded
by ``max_pending`` (beyond that: dropped and counted). asyncio's own datagram transport is
avoided on purpose: it calls recvfrom(256 KiB) per datagram.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from functools import partial

from dnsd.logs import Throttled
from dnsd.resolve.answer import RCODE_SERVFAIL
from dnsd.stats import Stats
from dnsd.wire.answer_cache import AnswerCache
from dnsd.wire.codec import error_response
from dnsd.wire.query import QueryHandler
from dnsd.wire.query_log import QueryLog
from dnsd.wire.rrl import DROP, SLIP, ResponseRateLimit, truncated

logger = logging.getLogger(__name__)
throttled = Throttled(logger)

BATCH = 64
MAX_QUERY_BYTES = 4096
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
MAX_PENDING = 2048


def bind_udp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        sock.bind((host, port))
        sock.setblocking(False)
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
    ) -> None:
        self._rrl = rrl
        self._query_log = query_log
        self._sock = sock
        self._handler = handler
        self._cache = answer_cache
        self._stats = stats
        self._max_pending = max_pending
        self._clock = clock
        self._pending: set[asyncio.Task[bytes | None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hit_durations = stats.durations[("udp", "cache")]

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return host, port

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        plain = self._rrl is None and self._query_log is None
        reader = self._on_readable if plain else self._on_readable_limited
        self._loop.add_reader(self._sock.fileno(), reader)

    def _on_readable(self) -> None:
        sock, cache, clock = self._sock, self._cache, self._clock
        now = started = clock()
        hits = 0  # since ``started``: each run of hits is timed as one
        for _ in range(BATCH):
            try:
                data, addr = sock.recvfrom(MAX_QUERY_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. an ICMP error queued on the socket
                logger.debug("udp receive error: %s", exc)
                continue
            response = cache.answer(data, addr[0], now)
            if response is None:
                if hits:
                    self._hit_durations.observe((clock() - started) / hits, hits)
                    hits = 0
                self._slow(data, addr)  # times itself
                started = clock()
                continue
            hits += 1
            try:
                sock.sendto(response, addr)
            except OSError:
                self._stats.drop("send failed")
        if hits:
            self._hit_durations.observe((clock() - started) / hits, hits)

    def _on_readable_limited(self) -> None:
        """``_on_readable`` with response rate limiting and/or the query log (a separate loop,
        so the default hot path pays nothing for them)."""
        query_log = self._query_log
        sock, cache, now = self._sock, self._cache, self._clock()
        for _ in range(BATCH):
            try:
                data, addr = sock.recvfrom(MAX_QUERY_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.debug("udp receive error: %s", exc)
                continue
            started = query_log.clock() if query_log is not None else 0.0
            response = cache.answer(data, addr[0], now)
            if response is None:
                self._slow(data, addr)
                continue
            if query_log is not None:
                query_log.log(addr[0], data, response, "cache", started)
            self._send(addr, response)

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
            self._stats.drop("too many pending")  # counted, and still answered
            busy = error_response(data, RCODE_SERVFAIL, echo_question=True)
            if busy is not None:
                self._send(addr, busy)
            return
        assert self._loop is not None
        task = self._loop.create_task(result)
        self._pending.add(task)
        task.add_done_callback(partial(self._finished, addr))

    def _finished(self, addr: tuple[str, int], task: asyncio.Task[bytes | None]) -> None:
        self._pending.discard(task)
        if task.cancelled() or task.exception() is not None:
            return
        response = task.result()
        if response is not None:
            self._send(addr, response)

    def _send(self, addr: tuple[str, int], response: bytes) -> None:
        if self._rrl is not None:
            verdict = self._rrl.verdict(addr[0], self._clock())
            if verdict == DROP:
                return
            if verdict == SLIP:
                response = truncated(response)
        try:
            self._sock.sendto(response, addr)
        except OSError:
            self._stats.drop("send failed")

    def stop_reading(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())

    async def drain(self, timeout_s: float) -> None:
        """Let queries already upstream finish (up to ``timeout_s``), cancel the rest, close."""
        if self._pending:
            _, late = await asyncio.wait(set(self._pending), timeout=timeout_s)
            for task in late:
                task.cancel()
        self._sock.close()
