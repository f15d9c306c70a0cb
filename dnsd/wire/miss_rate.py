"""How many misses one client address may hand the event loop each second.

The UDP listener thread answers what the packed-answer cache knows; everything else costs the
event loop (dnslib, the resolver) and, while the loop runs, the listener's share of the GIL.
One address sending questions the cache cannot answer as fast as it can (random names,
mutated packets) would keep the loop busy for everyone: the listener falls behind, the
kernel's receive queue fills, and other clients' questions wait or are lost there, where no
queue order can help them.  Held to ``per_second`` misses (a fresh count each second), such a
flood costs the loop a bounded share; beyond it the listener answers SERVFAIL at once and counts
it.  Addresses are counted on the listener thread only (no lock).
"""

from __future__ import annotations

from typing import Final

TOO_MANY_MISSES: Final = "too many misses from one client"
MISSES_PER_CLIENT_PER_SECOND: Final = 500
MAX_COUNTED: Final = 65_536  # addresses counted in one second; past it, new ones go uncounted


class MissRate:
    """``per_second`` 0: no limit."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._second = -1
        self._counts: dict[str, int] = {}

    def allows(self, client: str, now: float) -> bool:
        """Count a miss from ``client``: False once it has had its ``per_second``."""
        if not self.per_second:
            return True
        second = int(now)
        if second != self._second:
            self._second = second
            self._counts.clear()
        count = self._counts.get(client, 0)
        if count >= self.per_second:
            return False
        if count or len(self._counts) < MAX_COUNTED:
            self._counts[client] = count + 1
        return True
