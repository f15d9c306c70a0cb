"""Which names changed since a given record-store generation: the recent changes, bounded.

The record store appends each change's names here (on the event loop).  A reader that built
an answer at generation G and is about to keep or send it after an ``await`` asks
``changed_since(G, depends)``: True when a change after G touched one of the names the answer
depends on, or when the log no longer reaches back to G (then it cannot tell, and says True:
an answer is built again rather than kept stale).  Event-loop only, like the store.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Set

MAX_CHANGES = 4096  # changes remembered
# Names remembered over all of them (a bulk change can touch many): 50,000 cover the changes
# of the few seconds an answer may wait for an upstream, even during a bulk change of 100,000
# keys; beyond them an answer built before is built again, never kept stale.
MAX_NAMES = 50_000


class ChangeLog:
    def __init__(self, max_changes: int = MAX_CHANGES, max_names: int = MAX_NAMES) -> None:
        self._changes: deque[tuple[int, Set[str]]] = deque()
        self._max_changes = max_changes
        self._max_names = max_names
        self._names = 0
        self.generation = 0  # the newest change's
        self._floor = 0  # every change after this generation is still in the log

    def add(self, generation: int, names: Set[str]) -> None:
        self._changes.append((generation, names))
        self.generation = generation
        self._names += len(names)
        while len(self._changes) > self._max_changes or (
            self._names > self._max_names and len(self._changes) > 1
        ):
            dropped, forgotten = self._changes.popleft()
            self._names -= len(forgotten)
            self._floor = dropped

    def changed_since(self, generation: int, names: Iterable[str]) -> bool:
        """Did a change after ``generation`` touch one of ``names`` (True when unknown)?"""
        if generation >= self.generation:
            return False
        if generation < self._floor:
            return True
        wanted = names if isinstance(names, Set) else set(names)
        for changed_at, touched in reversed(self._changes):
            if changed_at <= generation:
                return False
            if not touched.isdisjoint(wanted):
                return True
        return False
