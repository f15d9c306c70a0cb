"""Keeping the cyclic garbage collector's pauses short while the record store is large.

A full collection walks every container object alive: with 100,000 etcd keys (800,000 records,
services and sets) that is about a quarter of a second holding the GIL, so every UDP listener
thread waits too.  CPython runs one whenever the objects that survived since the last one
reach a quarter of the rest, i.e. again and again while a bulk change grows the store.

``settle`` is called after a large change has been applied: it collects the young generations
(a few thousand objects, fast) and moves every survivor into the permanent generation
(``gc.freeze``), which later collections skip.  The store's objects are freed by reference
counting when they go (records hold no cycles), so freezing them costs no memory; what a
freeze can keep is cyclic garbage that was still alive at that moment, and ``settle`` runs
only after large changes, not per query.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)


class Settler:
    """Counts changed objects; past ``every`` of them, settles the heap once."""

    def __init__(self, every: int = 10_000) -> None:
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
