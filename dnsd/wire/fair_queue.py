"""Misses waiting for the event loop, taken round-robin by client address.

The UDP listener thread puts; the event loop takes.  Each client address has its own queue and
a turn in the rotation, so one address sending a flood of questions the cache cannot answer
gets one miss resolved per turn like any other client, not the whole queue; it is also held
to ``per_client`` waiting misses (beyond that: refused, and the caller answers SERVFAIL).
A lock keeps the two threads' view of the rotation whole (a miss is the slow path: the lock's
~0.1 µs is nothing beside resolving it).
"""

from __future__ import annotations

import threading
from collections import deque

Item = tuple[bytes, tuple[str, int]]

TOO_MANY = "too many queued"
TOO_MANY_FROM_ONE = "too many queued from one client"


class FairQueue:
    def __init__(self, limit: int, per_client: int) -> None:
        self.limit, self.per_client = limit, per_client
        self._lock = threading.Lock()
        self._by_client: dict[str, deque[Item]] = {}
        self._turns: deque[str] = deque()  # clients with misses waiting, in turn order
        self._count = 0

    def put(self, data: bytes, addr: tuple[str, int]) -> str | None:
        """Queue a miss; None when queued, else why not."""
        client = addr[0]
        with self._lock:
            if self._count >= self.limit:
                return TOO_MANY
            waiting = self._by_client.get(client)
            if waiting is None:
                waiting = self._by_client[client] = deque()
                self._turns.append(client)
            elif len(waiting) >= self.per_client:
                return TOO_MANY_FROM_ONE
            waiting.append((data, addr))
            self._count += 1
        return None

    def take(self) -> Item | None:
        """The next client's oldest miss, or None when nothing waits."""
        with self._lock:
            if not self._turns:
                return None
            client = self._turns.popleft()
            waiting = self._by_client[client]
            item = waiting.popleft()
            self._count -= 1
            if waiting:
                self._turns.append(client)
            else:
                del self._by_client[client]
        return item

    def __len__(self) -> int:
        return self._count
