"""Blocking work (reading and parsing files) run off the event loop on a daemon thread.

Unlike ``asyncio.to_thread`` (the default executor, which ``asyncio.run`` waits for on the
way out), a daemon thread never holds up shutdown: SIGTERM during a long parse ends dnsd
within its drain timeout and the parse is dropped with the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def on_daemon_thread(work: Callable[[], T], name: str = "offload") -> T:
    """``work()`` on a new daemon thread; its result (or exception) here."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:  # handed to the awaiting coroutine, raised there
            error = exc
            with contextlib.suppress(RuntimeError):  # the loop has closed: shutting down
                loop.call_soon_threadsafe(settle, lambda: future.set_exception(error))
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, lambda: future.set_result(result))

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future
