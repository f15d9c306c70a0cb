"""Keeping the cyclic garbage collector's pauses short while the record store is large.

A full collection walks every container object alive: with 100,000 etcd keys (800,000 records,
services and sets) that is about a quarter of a second holding the GIL, so every UDP listener
thread waits too.  CPython runs one whenever the objects that survived since the last one
reach a quarter of the rest, i.e. again and again while a bulk change grows the store.

``settle_after_start`` runs once the sources' first loads are in (or after a minute): one full
collection, then everything alive (the imported modules, the first load) is frozen, so later
full collections never walk it again.  ``settle`` is called after a large change has been
applied: it collects the young generations
(a few thousand objects, fast) and moves every survivor into the permanent generation
(``gc.freeze``), which later collections skip.  The store's objects are freed by reference
counting when they go (records hold no cycles), so freezing them costs no memory; what a
freeze can keep is cyclic garbage that was still alive at that moment, and ``settle`` runs
only after large changes, not per query.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

# Changes between two settles: a full collection in between walks at most what they made
# (2,000 etcd keys: about 2 ms; 10,000 cost 15-20 ms per collection at 100,000 keys).
SETTLE_EVERY = 2_000
START_WAIT_S = 60.0
START_POLL_S = 0.2


async def settle_after_start(
    loaded: Callable[[], bool], wait_s: float = START_WAIT_S, poll_s: float = START_POLL_S
) -> None:
    """Once ``loaded()`` (or after ``wait_s``): a full collection, then freeze the heap."""
    for _ in range(max(int(wait_s / poll_s), 1)):  # the sources' states are polled
        if loaded():
            break
        await asyncio.sleep(poll_s)
    gc.collect()
    gc.freeze()
    logger.debug("heap settled after start: %d objects frozen", gc.get_freeze_count())


class Settler:
    """Counts changed objects; past ``every`` of them, settles the heap once."""

    def __init__(self, every: int = SETTLE_EVERY) -> None:
        self.every = every
        self._since = 0
        self.settled = 0

    def changed(self, count: int) -> None:
        self._since += count
        if self._since >= self.every:
            self.settle()

    def settle(self) -> None:
        self._since = 0
        gc.collect(1)
        gc.freeze()
        self.settled += 1
        if logger.isEnabledFor(logging.DEBUG):  # the count walks every frozen object
            logger.debug("heap settled: %d objects frozen", gc.get_freeze_count())
