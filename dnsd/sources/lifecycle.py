"""What every source shares: its health in one vocabulary, backoff, its threads, and the hand
that passes work from those threads to the event loop (the only writer of the store).

A source (static, docker, etcd, etcd-publish) is started by the daemon, stopped with ``stop``
and joined with ``join``; ``health`` says how it is doing.  Knows nothing about DNS.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

OK = "ok"
DEGRADED = "degraded"  # synced once, serving what it had
DOWN = "down"  # never synced: holds readiness back
ABSENT = "absent"  # on by default but not there (no Docker socket): watched for, no failure


@dataclass(frozen=True)
class SourceHealth:
    state: str  # OK, DEGRADED, DOWN or ABSENT
    reason: str = ""  # why not OK
    synced: bool = False  # has delivered its records at least once
    detail: dict[str, Any] = field(default_factory=dict)  # e.g. {"revision": 42}

    @staticmethod
    def of(connected: bool, reason: str, synced: bool, **detail: Any) -> SourceHealth:
        """OK when connected; otherwise DEGRADED if it synced once, else DOWN."""
        if connected:
            return SourceHealth(OK, "", synced, detail)
        return SourceHealth(DEGRADED if synced else DOWN, reason, synced, detail)


class Source(Protocol):
    """A writer of the record store, as the daemon runs every one of them: ``run`` on the
    event loop until cancelled (starting any threads), ``health`` for /ready, ``stop`` to
    tell its threads to end, ``join`` to wait for them at most ``stop_timeout_s``."""

    name: str
    stop_timeout_s: float

    async def run(self) -> None: ...

    def health(self) -> SourceHealth: ...

    def stop(self) -> None: ...

    def join(self, timeout_s: float) -> None: ...


JOIN_TIMEOUT_S = 0.2  # for a source's threads to finish once told to stop (then left behind)


class Backoff:
    """Waits that double from ``low`` to ``high``; ``reset`` after a success."""

    def __init__(self, low: float, high: float) -> None:
        self._low, self._high = low, high
        self._next = low

    def next(self) -> float:
        wait, self._next = self._next, min(self._next * 2, self._high)
        return wait

    def reset(self) -> None:
        self._next = self._low


class Threads:
    """A source's threads: started by name, told to stop through one event, joined."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def join(self, timeout_s: float) -> None:
        """Wait for every thread, ``timeout_s`` in all (a thread stuck in I/O is left behind:
        they are daemon threads)."""
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0))


class LoopHand:
    """Passes a call from a source's thread to the event loop; dropped once the loop closes."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def __call__(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closing during shutdown
                loop.call_soon_threadsafe(callback, *args)
