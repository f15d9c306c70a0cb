"""Who may recurse: client addresses matched against ``allow_recursion`` networks.

Asked from the event loop and the UDP listener threads.  The verdicts are remembered in a
memo read without a lock (one dict ``get``: whole under the GIL) and written under ``_lock``
(a miss: the first question from an address), so no two writers interleave a clear with a
set; a verdict is a pure function of the address, so one read a moment before a clear is
still right.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterable

from dnsd.resolve.scopes import client_address

DEFAULT_ALLOW_RECURSION = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
    "fe80::/10",
)
_MEMO_ENTRIES = 4096

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Acl:
    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: list[Network] = [ipaddress.ip_network(n, strict=False) for n in networks]
        self._memo: dict[str, bool] = {}
        self._lock = threading.Lock()
        # The verdict for a client already decided, else None: one dict lookup (what the UDP
        # threads ask before serving a forwarded answer; ``allows`` decides the rest).
        self.decided: Callable[[str], bool | None] = self._memo.get

    def allows(self, client_ip: str) -> bool:
        known = self._memo.get(client_ip)
        if known is not None:
            return known
        address = client_address(client_ip)
        allowed = address is not None and any(address in network for network in self.networks)
        with self._lock:
            if len(self._memo) >= _MEMO_ENTRIES:
                self._memo.clear()
            self._memo[client_ip] = allowed
        return allowed
