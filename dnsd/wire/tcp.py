"""TCP listener: length-framed DNS (RFC 1035 4.2.2, RFC 7766).

Several queries per connection, answered as they complete (pipelining), an idle timeout that
also bounds a blocked write (a client that does not read), a cap on each connection's unsent
bytes, and limits on open connections in all and per client address (beyond them a new
connection is closed at once and counted), so slow or non-reading clients cannot hold every
slot or grow memory; connections take turns, one query each.  When every slot is taken, a
new connection takes the slot of an idle one (waiting for its next question, none being
answered: RFC 7766 6.2.3 lets a server close those under pressure), of the address holding
the most connections first, then the one idle longest; only when none is idle is the new
one refused.  Event-loop only.  Every answer goes through
``QueryHandler`` with the full 64 KiB size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dnsd.logs import Throttled
from dnsd.protocol import RCODE_SERVFAIL
from dnsd.stats import Stats
from dnsd.wire.codec import error_response
from dnsd.wire.query import QueryHandler

logger = logging.getLogger(__name__)
throttled = Throttled(logger)

IDLE_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 256
MAX_CONNECTIONS_PER_CLIENT = 32
MAX_INFLIGHT_PER_CONNECTION = 32
MAX_UNSENT_BYTES = 256 * 1024  # a connection with more waiting to be read is closed
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


@dataclass(eq=False, slots=True)
class _Connection:
    client_ip: str
    writer: asyncio.StreamWriter
    inflight: set[asyncio.Task[None]] = field(default_factory=set)
    waiting_since: float | None = None  # waiting for the next question, since then

    @property
    def idle(self) -> bool:
        return self.waiting_since is not None and not self.inflight


class TcpServer:
    def __init__(
        self,
        sock: socket.socket,
        handler: QueryHandler,
        stats: Stats,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
        max_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sock = sock
        self._handler = handler
        self._stats = stats
        self._idle_timeout_s = idle_timeout_s
        self._max_connections = max_connections
        self._max_per_client = max_per_client
        self._per_client: dict[str, int] = {}
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self._clock = clock

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, sock=self._sock)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client_ip = peer[0] if peer else ""
        if self._per_client.get(client_ip, 0) >= self._max_per_client or (
            len(self._connections) >= self._max_connections and not self._close_an_idle_one()
        ):
            self._stats.tcp_refused += 1
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        connection = self._connections[task] = _Connection(client_ip, writer)
        self._per_client[client_ip] = self._per_client.get(client_ip, 0) + 1
        self._stats.tcp_connections += 1
        inflight = connection.inflight
        try:
            while True:
                connection.waiting_since = self._clock()
                data = await self._read_message(reader)
                connection.waiting_since = None
                if data is None:
                    break
                try:
                    result = self._handler.handle(data, client_ip, udp=False)
                except Exception as exc:  # a bug: still answer, never a traceback per query
                    throttled.warning("handler", "query from %s failed: %r", client_ip, exc)
                    result = error_response(data, RCODE_SERVFAIL, echo_question=True)
                if result is None:
                    break  # unreadable header: nothing sane to answer, close
                if isinstance(result, bytes):
                    _write(writer, result)
                else:
                    if len(inflight) >= MAX_INFLIGHT_PER_CONNECTION:
                        await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                    pending = asyncio.ensure_future(_write_when_done(result, writer))
                    inflight.add(pending)
                    pending.add_done_callback(inflight.discard)
                async with asyncio.timeout(self._idle_timeout_s):  # a client that never reads
                    await writer.drain()
                # Pipelined queries are already buffered, so nothing above waits: yield, so
                # every connection gets a turn per query and one client's many connections
                # cannot keep the others waiting.
                await asyncio.sleep(0)
            if inflight:
                await asyncio.wait(inflight, timeout=self._idle_timeout_s)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            writer.transport.abort()  # drop what the client did not read
        finally:
            for pending in inflight:
                pending.cancel()
            self._release(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _close_an_idle_one(self) -> bool:
        """Free a slot: close the idle connection of the address holding the most, the one
        idle longest among them; False when no connection is idle."""
        idle = [(task, c) for task, c in self._connections.items() if c.idle]
        if not idle:
            return False
        task, victim = min(
            idle, key=lambda item: (-self._per_client[item[1].client_ip], item[1].waiting_since)
        )
        self._release(task)
        victim.writer.transport.abort()  # its read ends; its task finishes on its own
        self._stats.tcp_idle_closed += 1
        return True

    def _release(self, task: asyncio.Task[None]) -> None:
        """Give a connection's slot back (once: at its end, or when it was closed for
        another)."""
        connection = self._connections.pop(task, None)
        if connection is None:
            return
        left = self._per_client[connection.client_ip] - 1
        if left:
            self._per_client[connection.client_ip] = left
        else:
            del self._per_client[connection.client_ip]

    async def _read_message(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            async with asyncio.timeout(self._idle_timeout_s):
                (length,) = _LENGTH.unpack(await reader.readexactly(2))
                return await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            return None

    async def close(self, timeout_s: float) -> None:
        """Stop accepting, give open connections ``timeout_s`` to finish, then cancel them."""
        if self._server is not None:
            self._server.close()
        if self._connections:
            _, late = await asyncio.wait(list(self._connections), timeout=timeout_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=0.5)


async def _write_when_done(
    pending: asyncio.Future[bytes | None] | object, writer: asyncio.StreamWriter
) -> None:
    response = await pending  # type: ignore[misc]
    if response is not None and not writer.is_closing():
        with contextlib.suppress(ConnectionError):  # cut off: the reading loop sees it too
            _write(writer, response)


def _write(writer: asyncio.StreamWriter, response: bytes) -> None:
    """Queue one framed answer; a client with too much unread is cut off."""
    if writer.transport.get_write_buffer_size() + len(response) > MAX_UNSENT_BYTES:
        writer.transport.abort()
        raise ConnectionResetError("client does not read its answers")
    writer.write(_LENGTH.pack(len(response)) + response)
