"""Driving the UDP listener's own loop (``UdpServer._serve``, the production hot path) with
scripted packets, from any client address, without a network: what it sends back, or None
when it hands the packet to the event loop."""

from __future__ import annotations

from collections import deque
from typing import Any

from dnsd.stats import Stats
from dnsd.wire.answer_cache import AnswerCache
from dnsd.wire.udp import UdpServer


class _ScriptedSocket:
    def __init__(self) -> None:
        self.inbox: deque[tuple[bytes, tuple[str, int]]] = deque()
        self.sent: list[bytes] = []
        self.server: UdpServer | None = None

    def recvfrom(self, _size: int) -> tuple[bytes, tuple[str, int]]:
        if not self.inbox:  # the end of the script: the loop returns
            assert self.server is not None
            self.server._stopping = True
            raise OSError("no more packets")
        return self.inbox.popleft()

    def sendto(self, data: bytes, _addr: tuple[str, int]) -> int:
        self.sent.append(data)
        return len(data)

    def getsockname(self) -> tuple[str, int]:
        return "127.0.0.1", 53


class _NoLoop:
    """A miss is queued for the event loop; none runs here."""

    def call_soon_threadsafe(self, *_: Any) -> None:
        pass


def served(cache: AnswerCache, packet: bytes, client: str, now: float) -> bytes | None:
    """The listener loop's reply to ``packet`` from ``client`` at ``now`` (None: a miss)."""
    sock = _ScriptedSocket()
    server = UdpServer(sock, None, cache, Stats(), clock=lambda: now, misses_per_client=0)  # type: ignore[arg-type]
    sock.server = server
    server._loop = _NoLoop()  # type: ignore[assignment]
    sock.inbox.append((packet, (client, 5353)))
    server._serve()
    return sock.sent[0] if sock.sent else None
