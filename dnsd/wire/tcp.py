"""TCP listener: length-framed DNS (RFC 1035 4.2.2, RFC 7766).

Several queries per connection, answered as they complete (pipelining), an idle timeout that
also bounds a blocked write (a client that does not read), a cap on each connection's unsent
bytes, and limits on open connections in all and per client address (beyond them a new
connection is closed at once and counted), so slow or non-reading clients cannot hold every
slot or grow memory; connections take turns, one query each.  Every answer goes through
``QueryHandler`` with the full 64 KiB size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct

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


class TcpServer:
    def __init__(
        self,
        sock: socket.socket,
        handler: QueryHandler,
        stats: Stats,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
        max_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
    ) -> None:
        self._sock = sock
        self._handler = handler
        self._stats = stats
        self._idle_timeout_s = idle_timeout_s
        self._max_connections = max_connections
        self._max_per_client = max_per_client
        self._per_client: dict[str, int] = {}
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, sock=self._sock)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client_ip = peer[0] if peer else ""
        held = self._per_client.get(client_ip, 0)
        if len(self._connections) >= self._max_connections or held >= self._max_per_client:
            self._stats.tcp_refused += 1
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._per_client[client_ip] = held + 1
        self._stats.tcp_connections += 1
        inflight: set[asyncio.Task[None]] = set()
        try:
            while True:
                data = await self._read_message(reader)
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
            self._connections.discard(task)
            left = self._per_client[client_ip] - 1
            if left:
                self._per_client[client_ip] = left
            else:
                del self._per_client[client_ip]
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

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
            _, late = await asyncio.wait(set(self._connections), timeout=timeout_s)
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
