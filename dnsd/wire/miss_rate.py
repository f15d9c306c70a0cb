"""How many misses a client address, and its network, may hand the event loop each second.

The UDP listener thread answers what the packed-answer cache knows; everything else costs the
event loop (dnslib, the resolver) and, while the loop runs, the listener's share of the GIL.
One address, or many addresses of one network (a /24 of IPv4, a /56 of IPv6: what one host
or one customer is likely to hold), sending questions the cache cannot answer as fast as it
can (random names, mutated packets) would keep the loop busy for everyone: the listener falls
behind, the kernel's receive queue fills, and other clients' questions wait or are lost there,
where no queue order can help them.  Each second (a fresh count each second) an address may
hand over ``per_client`` misses, a network ``per_prefix``, and all clients together
``total``: past the total, only networks below their equal share of it still pass, so the
heaviest are shed first.  A miss over a limit is answered TC=1 at once (``slip``, from the
packet's own bytes), as RRL's slip does: a real client asks again over TCP and is answered.
An address gets at most ``SLIP_PER_LIMIT`` times its limit of such replies a second (a busy
client behind one address asks again over TCP long before); past them it is a flood: its
address joins ``shed`` for the rest of the second, and the listener drops its misses
unanswered before looking them up (``shedding``), cheaper than a cache hit.
Counted on the listener thread only (no lock).
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Final

TOO_MANY_MISSES: Final = "too many misses from one client"
TOO_MANY_FROM_NETWORK: Final = "too many misses from one network"
OVER_TOTAL: Final = "too many misses in all (heaviest networks first)"
SHED: Final = "too many misses from one client, past its TC replies (no reply)"
SLIP_PER_LIMIT: Final = 10  # TC replies a second to one address, in multiples of its limit
MISSES_PER_CLIENT_PER_SECOND: Final = 500
MISSES_PER_PREFIX_PER_SECOND: Final = 2_000
MISSES_PER_SECOND: Final = 10_000
MAX_COUNTED: Final = 65_536  # addresses counted in one second; past it, new ones go uncounted
IPV4_PREFIX: Final = 24
IPV6_PREFIX: Final = 56


@lru_cache(maxsize=4096)
def _ipv6_network(client: str) -> str:
    try:
        network = ipaddress.IPv6Network(f"{client.partition('%')[0]}/{IPV6_PREFIX}", strict=False)
    except ValueError:
        return client
    return str(network.network_address)


def network_of(client: str) -> str:
    """The /24 (IPv4, IPv4-mapped IPv6 too) or /56 (IPv6) a client address is counted in."""
    if "." in client:  # 10.1.2.3, ::ffff:10.1.2.3
        return client.rpartition(".")[0]
    return _ipv6_network(client)


class MissRate:
    """Each limit 0: none."""

    def __init__(
        self,
        per_client: int,
        per_prefix: int = MISSES_PER_PREFIX_PER_SECOND,
        total: int = MISSES_PER_SECOND,
    ) -> None:
        self.per_client, self.per_prefix, self.total = per_client, per_prefix, total
        self._limited = bool(per_client or per_prefix or total)
        self._second = -1
        self._counts: dict[str, int] = {}
        self._networks: dict[str, int] = {}
        self._slipped: dict[str, int] = {}  # TC replies this second, by address
        self.shed: set[str] = set()  # addresses past their TC replies this second
        self._all = 0

    def over(self, client: str, now: float) -> str | None:
        """Count a miss from ``client``; the limit it is over (not counted then), or None."""
        if not self._limited:
            return None
        second = int(now)
        if second != self._second:
            self._second = second
            self._new_second()
        count = self._counts.get(client, 0)
        if self.per_client and count >= self.per_client:
            slipped = self._slipped.get(client, 0)
            if slipped >= self.per_client * SLIP_PER_LIMIT:
                self.shed.add(client)
                return SHED
            self._slipped[client] = slipped + 1
            return TOO_MANY_MISSES
        network = network_of(client)
        in_network = self._networks.get(network, 0)
        if self.per_prefix and in_network >= self.per_prefix:
            return TOO_MANY_FROM_NETWORK
        # Past the total: a network at or above an equal share of it waits for next second.
        if (
            self.total
            and self._all >= self.total
            and in_network * len(self._networks) >= self.total
        ):
            return OVER_TOTAL
        if count or len(self._counts) < MAX_COUNTED:
            self._counts[client] = count + 1
            self._networks[network] = in_network + 1
        self._all += 1
        return None

    def shedding(self, client: str, now: float) -> bool:
        """For an address in ``shed``: True while the second it was shed in lasts (its miss
        is dropped unanswered, counted by the caller)."""
        if int(now) == self._second:
            return True
        self._second = int(now)
        self._new_second()
        return False

    def _new_second(self) -> None:
        self._counts.clear()
        self._networks.clear()
        self._slipped.clear()
        self.shed.clear()
        self._all = 0

    def allows(self, client: str, now: float) -> bool:
        return self.over(client, now) is None
