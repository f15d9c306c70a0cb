"""SIGTERM always ends dnsd: an orderly stop first, a forced exit once the deadline passes.

The signal handler is a plain ``signal.signal`` one, which CPython runs on the main thread
between any two bytecodes, so it runs even while the event loop is busy (a hosts file of
millions of lines being applied, a stuck callback) where an ``add_signal_handler`` callback
would wait for the loop.  It asks the loop to stop and arms a watchdog thread: if the
process is still alive ``deadline_s`` later, the watchdog logs why and ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

logger = logging.getLogger(__name__)


class ShutdownGuard:
    def __init__(
        self,
        deadline_s: float,
        request_stop: Callable[[], None],
        exit_now: Callable[[int], None] = os._exit,
    ) -> None:
        self.deadline_s = deadline_s
        self._request_stop = request_stop
        self._exit_now = exit_now
        self._timer: threading.Timer | None = None

    def install(self, *signals: signal.Signals) -> None:
        for sig in signals:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.arm(signal.Signals(signum).name)

    def arm(self, why: str) -> None:
        """Ask for an orderly stop; force the exit after the deadline (once)."""
        if self._timer is None:
            self._timer = threading.Timer(self.deadline_s, self._expired, args=(why,))
            self._timer.daemon = True
            self._timer.name = "shutdown deadline"
            self._timer.start()
        self._request_stop()

    def _expired(self, why: str) -> None:
        with contextlib.suppress(Exception):  # logging must not stand in the way of the exit
            logger.warning("%s: not stopped within %.1f s, exiting now", why, self.deadline_s)
            logging.shutdown()
        self._exit_now(0)


def stop_soon(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Callable[[], None]:
    """A ``request_stop`` that sets ``stop`` on ``loop`` (safe from a signal handler)."""

    def request() -> None:
        with contextlib.suppress(RuntimeError):  # the loop has already closed
            loop.call_soon_threadsafe(stop.set)

    return request
