"""DNS over TLS to one upstream over one kept-open connection (RFC 7858 3.4).

Questions are pipelined: each is written as soon as it is asked, and a reader task hands each
reply to the question with its ID, in whatever order the replies come.  The connection is
opened on the first question, closed after ``IDLE_TIMEOUT_S`` without one, and opened again
after any failure (a reset, a reply that does not parse, a closed stream): the questions it
held fail at once, and the forwarder's own timeout bounds every wait.  A question that times
out with no reply at all read on the connection since it was written marks the connection
dead (a server that went silent on it, or a frame cut short that leaves the stream out of
step): it is closed, so the next question, the health probe's included, opens a new one.
Knows nothing about what is asked: the forwarder packs the query and checks the reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct

from dnsd.errors import DnsdError

logger = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 10.0  # as CoreDNS's forward "expire" default
_LENGTH = struct.Struct("!H")


class DotError(DnsdError, ConnectionError):
    """The connection failed while a question waited on it."""


class DotConnection:
    def __init__(
        self, host: str, port: int, tls: ssl.SSLContext, server_name: str,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:  # fmt: skip
        self._host, self._port, self._tls, self._name = host, port, tls, server_name
        self._idle_timeout_s = idle_timeout_s
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._connecting = asyncio.Lock()
        self._idle: asyncio.TimerHandle | None = None
        self.connections = 0  # opened so far
        self.replies = 0  # frames read, over every connection
        self.silent_closed = 0  # connections closed: a question timed out with nothing read

    def busy(self, ident: int) -> bool:
        """Whether a question with this ID waits on the connection (pick another)."""
        return ident in self._pending

    async def ask(self, packet: bytes, ident: int) -> bytes:
        """The reply to ``packet`` (whose ID is ``ident``, not ``busy``).  A connection that
        the server closed under the question is replaced and the question asked once more on
        the new one (RFC 7766 6.2.1: a server may close idle or busy connections)."""
        for attempt in (1, 2):
            writer = await self._connected()
            reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            self._pending[ident] = reply
            self._cancel_idle()
            replies_before = self.replies
            try:
                writer.write(_LENGTH.pack(len(packet)) + packet)
                await writer.drain()
                return await reply
            except asyncio.CancelledError:  # the forwarder's timeout
                if self.replies == replies_before and self._writer is writer:
                    self.silent_closed += 1
                    self._close(TimeoutError("no reply on the connection"))
                raise
            except (OSError, ssl.SSLError) as exc:  # DotError too: closed while waiting
                self._close(exc)
                if attempt == 2:
                    raise DotError(f"connection failed: {exc}") from exc
            finally:
                self._pending.pop(ident, None)
                if not self._pending:
                    self._start_idle()
        raise AssertionError("unreachable")

    async def _connected(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is None or self._writer.is_closing():
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._tls, server_hostname=self._name
                )
                self._writer = writer
                self.connections += 1
                self._reader_task = asyncio.ensure_future(self._read(reader, writer))
            return self._writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = _LENGTH.unpack(await reader.readexactly(2))
                data = await reader.readexactly(length)
                self.replies += 1
                if len(data) < 2:
                    raise DotError("a reply shorter than a DNS header")
                waiting = self._pending.get(_LENGTH.unpack_from(data)[0])
                if waiting is not None and not waiting.done():
                    waiting.set_result(data)
                # a reply nobody waits for (timed out meanwhile): dropped
        except (asyncio.IncompleteReadError, OSError, ssl.SSLError, DotError) as exc:
            if self._writer is writer:
                self._close(exc)
        except asyncio.CancelledError:
            pass

    def _close(self, why: BaseException | None) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        if self._reader_task is not None and self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()
        self._reader_task = None
        for waiting in self._pending.values():
            if not waiting.done():
                waiting.set_exception(DotError(f"connection closed: {why or 'idle'}"))
        self._cancel_idle()

    def _start_idle(self) -> None:
        if self._writer is not None and self._idle is None:
            loop = asyncio.get_running_loop()
            self._idle = loop.call_later(self._idle_timeout_s, self._close, None)

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nothing left to close
            self._close(None)

    async def aclose(self) -> None:
        """``close``, and wait until the connection is closed."""
        writer, reader_task = self._writer, self._reader_task
        self.close()
        if reader_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await reader_task
        if writer is not None:
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
