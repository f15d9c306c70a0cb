"""TCP listener: length-framed DNS (RFC 1035 4.2.2, RFC 7766).

Several queries per connection, read and answered in batches: what a connection has sent is
split into questions at once, those the packed-answer cache knows (``AnswerCache.answer``
with ``tcp``: never an answer cut to fit UDP) are answered from their packed bytes, the ID
patched and the letter case echoed, and the answers of a batch go out in one write; the rest
go through ``QueryHandler`` with the full 64 KiB size, answered as they complete
(pipelining, RFC 7766 6.2.1.1: in any order).  Connections take turns: at most
``FRAMES_PER_TURN`` cached answers or one resolved question per connection per turn of the
event loop.  An idle timeout (no whole question for that long) also bounds a blocked write (a
client that does not read), each connection's unsent bytes are capped, and open connections
are limited in all and per client address (beyond them a new connection is closed at once and
counted), so slow or non-reading clients cannot hold every slot or grow memory.  When every
slot is taken, a new connection takes the slot of an idle one (waiting for its next question,
none being answered: RFC 7766 6.2.3 lets a server close those under pressure), of the address
holding the most connections first, then the one idle longest; only when none is idle is the
new one refused.  Event-loop only (an ``asyncio.Protocol`` per connection: no task and no
stream per question).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any

from dnsd.logs import Throttled
from dnsd.protocol import RCODE_SERVFAIL
from dnsd.stats import Stats
from dnsd.wire.answer_cache import TCP_SLOT, AnswerCache
from dnsd.wire.codec import error_response
from dnsd.wire.query import QueryHandler, Response

logger = logging.getLogger(__name__)
throttled = Throttled(logger)

IDLE_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 256
MAX_CONNECTIONS_PER_CLIENT = 32
MAX_INFLIGHT_PER_CONNECTION = 32
MAX_UNSENT_BYTES = 256 * 1024  # a connection with more waiting to be read is closed
FRAMES_PER_TURN = 64  # cached answers per connection per turn of the event loop
_LENGTH = struct.Struct("!H")


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class TcpServer:
    def __init__(
        self,
        sock: socket.socket,
        handler: QueryHandler,
        stats: Stats,
        answer_cache: AnswerCache | None = None,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
        max_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``answer_cache``: the packed answers to serve from (None: every question goes
        through ``handler``, e.g. when each answer must be logged)."""
        self.handler = handler
        self.answer_cache = answer_cache
        self.stats = stats
        self.idle_timeout_s = idle_timeout_s
        self.clock = clock
        self._sock = sock
        self._max_connections = max_connections
        self._max_per_client = max_per_client
        self._per_client: dict[str, int] = {}
        self._server: asyncio.Server | None = None
        self._connections: dict[Connection, None] = {}  # in the order they came

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Connection(self), sock=self._sock)

    def admit(self, connection: Connection) -> bool:
        """Take a slot for a new connection (perhaps an idle one's); False: refused."""
        client_ip = connection.client_ip
        if self._per_client.get(client_ip, 0) >= self._max_per_client or (
            len(self._connections) >= self._max_connections and not self._close_an_idle_one()
        ):
            self.stats.tcp_refused += 1
            return False
        self._connections[connection] = None
        self._per_client[client_ip] = self._per_client.get(client_ip, 0) + 1
        self.stats.tcp_connections += 1
        return True

    def _close_an_idle_one(self) -> bool:
        """Free a slot: close the idle connection of the address holding the most, the one
        idle longest among them; False when no connection is idle."""
        idle = [c for c in self._connections if c.idle]
        if not idle:
            return False
        victim = min(idle, key=lambda c: (-self._per_client[c.client_ip], c.waiting_since))
        self.release(victim)
        victim.abort()
        self.stats.tcp_idle_closed += 1
        return True

    def release(self, connection: Connection) -> None:
        """Give a connection's slot back (once: at its end, or when it was closed for
        another)."""
        if connection not in self._connections:
            return
        del self._connections[connection]
        left = self._per_client[connection.client_ip] - 1
        if left:
            self._per_client[connection.client_ip] = left
        else:
            del self._per_client[connection.client_ip]

    async def close(self, timeout_s: float) -> None:
        """Stop accepting, give open connections ``timeout_s`` to finish, then close them."""
        if self._server is not None:
            self._server.close()
        if self._connections:
            ends = [c.finished for c in self._connections]
            _, late = await asyncio.wait(ends, timeout=timeout_s)
            if late:
                for connection in list(self._connections):
                    connection.abort()
                await asyncio.wait(late, timeout=0.5)


class Connection(asyncio.Protocol):
    """One client connection: its unread bytes, its questions being resolved, its state."""

    def __init__(self, server: TcpServer) -> None:
        self._server = server
        self.client_ip = ""
        self.transport: asyncio.Transport | None = None
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting_since: float | None = None  # no whole question to answer, since then
        self._buffer = bytearray()
        self._inflight: set[asyncio.Task[bytes | None]] = set()
        self._write_blocked_since: float | None = None
        self._turn_due = False  # a _take_turn is scheduled (questions are left to answer)
        self._reading = True
        self._eof = False
        self._timer: asyncio.TimerHandle | None = None
        self._admitted = False

    @property
    def idle(self) -> bool:
        return self.waiting_since is not None and not self._inflight

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # --- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else ""
        if not self._server.admit(self):
            transport.abort()
            return
        self._admitted = True
        self.waiting_since = self._server.clock()
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._turn_due:
            self._take_turn()

    def eof_received(self) -> bool:
        self._eof = True
        self._end_if_done()
        return True  # keep the transport open: answers still on their way are written

    def pause_writing(self) -> None:
        self._write_blocked_since = self._server.clock()
        self._flow()

    def resume_writing(self) -> None:
        self._write_blocked_since = None
        self._flow()

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self._inflight:
            task.cancel()
        if self._timer is not None:
            self._timer.cancel()
        if self._admitted:
            self._server.release(self)
        if not self.finished.done():
            self.finished.set_result(None)

    # --- answering -------------------------------------------------------------------------
    def _take_turn(self) -> None:
        """Answer this connection's whole questions: cached ones up to ``FRAMES_PER_TURN``,
        at most one through the resolver; what is left waits for the next turn."""
        self._turn_due = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        server = self._server
        cache = server.answer_cache
        buffer, offset, size = self._buffer, 0, len(self._buffer)
        out: list[bytes] = []
        answered = resolved = 0
        now = server.clock()
        while size - offset >= 2:
            end = offset + 2 + (buffer[offset] << 8 | buffer[offset + 1])
            if end > size:
                break
            if answered >= FRAMES_PER_TURN or resolved:
                self._turn_due = True
                break
            if len(self._inflight) >= MAX_INFLIGHT_PER_CONNECTION:
                break  # a question being resolved finishes first (its end calls us)
            data = bytes(buffer[offset + 2 : end])
            offset = end
            answered += 1
            response = (
                cache.answer(data, self.client_ip, now, TCP_SLOT, tcp=True) if cache else None
            )
            if response is None:
                resolved += 1
                result = self._resolve(data)
                if result is None:  # unreadable header: nothing sane to answer, close
                    del buffer[:offset]
                    self._write(out)
                    transport.close()
                    return
                if not isinstance(result, bytes):
                    self._later(result, data)
                    continue
                response = result
            out.append(_LENGTH.pack(len(response)) + response)
        del buffer[:offset]
        self._write(out)
        if self._turn_due:
            asyncio.get_running_loop().call_soon(self._take_turn)
        if self._whole_question_left():
            self.waiting_since = None
        elif answered or self.waiting_since is None:
            self.waiting_since = now  # idle from the last whole question (a part is not one)
        self._flow()
        self._end_if_done()

    def _resolve(self, data: bytes) -> Response:
        try:
            return self._server.handler.handle(data, self.client_ip, udp=False)
        except Exception as exc:  # a bug: still answer, never a traceback per query
            throttled.warning("handler", "query from %s failed: %r", self.client_ip, exc)
            return error_response(data, RCODE_SERVFAIL, echo_question=True)

    def _later(self, pending: Coroutine[Any, Any, bytes | None], data: bytes) -> None:
        task = asyncio.ensure_future(pending)
        self._inflight.add(task)
        task.add_done_callback(lambda done: self._resolved(done, data))

    def _resolved(self, task: asyncio.Task[bytes | None], data: bytes) -> None:
        self._inflight.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            throttled.warning("handler", "query from %s failed: %r", self.client_ip, exc)
            response: bytes | None = error_response(data, RCODE_SERVFAIL, echo_question=True)
        else:
            response = task.result()
        if response is not None:
            self._write([_LENGTH.pack(len(response)) + response])
        if not self._turn_due and self._whole_question_left():
            self._take_turn()  # questions held back while the in-flight ones were many
        else:
            self._flow()
            self._end_if_done()

    def _write(self, framed: list[bytes]) -> None:
        """Queue framed answers; a client with too much unread is cut off."""
        transport = self.transport
        if not framed or transport is None or transport.is_closing():
            return
        data = b"".join(framed)
        if transport.get_write_buffer_size() + len(data) > MAX_UNSENT_BYTES:
            transport.abort()  # the client does not read its answers
            return
        transport.write(data)

    # --- flow and time -------------------------------------------------------------------------
    def _whole_question_left(self) -> bool:
        buffer = self._buffer
        return len(buffer) >= 2 and len(buffer) >= 2 + (buffer[0] << 8 | buffer[1])

    def _flow(self) -> None:
        """Read more only while this connection's answers keep up: not while questions
        already read wait for a turn or for in-flight ones, nor while the client does not
        read its answers."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        wanted = not (
            self._turn_due
            or self._write_blocked_since is not None
            or (len(self._inflight) >= MAX_INFLIGHT_PER_CONNECTION)
        )
        if wanted != self._reading:
            self._reading = wanted
            if wanted:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def _end_if_done(self) -> None:
        """After the client's end of stream: close once every answer is written."""
        transport = self.transport
        if (
            self._eof
            and transport is not None
            and not transport.is_closing()
            and not self._inflight
            and not self._whole_question_left()
        ):
            transport.close()

    def _arm_timer(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(
            self._server.idle_timeout_s, self._check_time
        )

    def _check_time(self) -> None:
        """No whole question for the idle timeout, or answers unread for as long: closed."""
        limit = self._server.idle_timeout_s
        now = self._server.clock()
        since = [t for t in (self.waiting_since, self._write_blocked_since) if t is not None]
        if since and now - min(since) >= limit:
            self.abort()
            return
        due = min(since) + limit - now if since else limit
        self._timer = asyncio.get_running_loop().call_later(max(due, 0.01), self._check_time)
