"""How many questions may wait on upstreams at once, in all and per client.

Every forwarded question holds a socket until its upstream answers or times out, so a flood of
random names with a slow or dead upstream would otherwise take every file descriptor and every
slot.  The total is kept well below the process's open-file limit (RLIMIT_NOFILE), and one
client may hold only a share of it, so other clients (and local names, which never wait) are
answered while one client floods.  Knows nothing about DNS; the resolver chain asks it.
"""

from __future__ import annotations

import resource

FD_RESERVE = 128  # listeners, HTTP, Docker, etcd, logs
DEFAULT_MAX_PENDING = 2048
DEFAULT_CLIENT_SHARE = 0.25


def limit_from_nofile(configured: int, tcp_connections: int) -> int:
    """``configured`` (0: the default), capped by what the open-file limit leaves over."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = configured or DEFAULT_MAX_PENDING
    if soft == resource.RLIM_INFINITY:
        return wanted
    # Each pending question can hold one socket (UDP, or TCP after truncation).
    return max(16, min(wanted, (soft - FD_RESERVE - tcp_connections) // 2))


class UpstreamBudget:
    def __init__(self, total: int, per_client: int = 0) -> None:
        self.total = total
        self.per_client = per_client or max(1, int(total * DEFAULT_CLIENT_SHARE))
        self.pending = 0
        self._by_client: dict[str, int] = {}

    def take(self, client: str) -> bool:
        held = self._by_client.get(client, 0)
        if self.pending >= self.total or held >= self.per_client:
            return False
        self.pending += 1
        self._by_client[client] = held + 1
        return True

    def give(self, client: str) -> None:
        self.pending -= 1
        held = self._by_client[client] - 1
        if held:
            self._by_client[client] = held
        else:
            del self._by_client[client]
