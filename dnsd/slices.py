"""Long work on the event loop, cut into slices: between slices the loop serves again.

``in_slices`` hands out the items of an iterable and yields to the loop whenever about
``budget_s`` of time has passed since the last turn (the clock is read every ``CHECK_EVERY``
items only), so building or writing something big (/records at 50,000 names) never holds
UDP and TCP answers for more than a few milliseconds.  ``run_in_slices`` does the same for
work written as a generator of steps (``Steps``: a big change to the record store).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterable
from typing import TypeVar

SLICE_S = 0.003
CHECK_EVERY = 64

T = TypeVar("T")
# Work written as a generator that yields wherever it may pause and returns its result.
Steps = Generator[None, None, T]


async def in_slices(
    items: Iterable[T],
    budget_s: float = SLICE_S,
    clock: Callable[[], float] = time.perf_counter,
) -> AsyncIterator[T]:
    deadline = clock() + budget_s
    for count, item in enumerate(items, 1):
        yield item
        if count % CHECK_EVERY == 0 and clock() >= deadline:
            await asyncio.sleep(0)
            deadline = clock() + budget_s


def drive(steps: Steps[T]) -> T:
    """Run ``steps`` through without pausing; its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


async def run_in_slices(
    steps: Steps[T],
    before_pause: Callable[[], None],
    budget_s: float = SLICE_S,
    clock: Callable[[], float] = time.perf_counter,
) -> T:
    """Run ``steps``, letting the loop serve whenever ``budget_s`` has passed (after calling
    ``before_pause``); its result."""
    deadline = clock() + budget_s
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
        if clock() >= deadline:
            before_pause()
            await asyncio.sleep(0)
            deadline = clock() + budget_s
