"""Response rate limiting (BIND/Knot RRL style) for UDP clients outside ``allow_recursion``.

dnsd's answers can be bigger than the questions, so a spoofed source address makes it an
amplifier.  With RRL on, each client network (/24 for IPv4, /56 for IPv6 by default) may get
``responses_per_second`` UDP answers; beyond that, every ``slip``-th answer is replaced by an
empty truncated reply (TC=1: a real client retries over TCP, which cannot be spoofed) and the
rest are dropped.  Clients allowed to recurse are never limited.  Off by default; counted.
Knows nothing about resolving; the UDP listener asks it before sending.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from dnsd.resolve.scopes import client_address

SEND, SLIP, DROP = 0, 1, 2
MAX_BUCKETS = 100_000


@dataclass(frozen=True)
class RrlSettings:
    responses_per_second: int = 20
    slip: int = 2  # every slip-th limited answer goes out truncated; 0: drop them all
    ipv4_prefix: int = 24
    ipv6_prefix: int = 56


class _Bucket:
    __slots__ = ("limited", "second", "tokens")

    def __init__(self, tokens: int, second: int) -> None:
        self.tokens = tokens
        self.second = second
        self.limited = 0


class ResponseRateLimit:
    def __init__(self, settings: RrlSettings, exempt: Callable[[str], bool]) -> None:
        self._settings = settings
        self._exempt = exempt
        self._buckets: dict[str, _Bucket] = {}
        self._networks: dict[str, str] = {}
        self.slipped = 0
        self.dropped = 0

    def verdict(self, client_ip: str, now: float) -> int:
        """SEND, SLIP (send a truncated reply instead) or DROP."""
        if self._exempt(client_ip):
            return SEND
        key = self._network(client_ip)
        second = int(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._buckets.clear()
            bucket = self._buckets[key] = _Bucket(self._settings.responses_per_second, second)
        elif bucket.second != second:
            bucket.tokens, bucket.second = self._settings.responses_per_second, second
        if bucket.tokens > 0:
            bucket.tokens -= 1
            return SEND
        bucket.limited += 1
        slip = self._settings.slip
        if slip and bucket.limited % slip == 0:
            self.slipped += 1
            return SLIP
        self.dropped += 1
        return DROP

    def _network(self, client_ip: str) -> str:
        known = self._networks.get(client_ip)
        if known is not None:
            return known
        address = client_address(client_ip)
        if address is None:
            network = client_ip
        else:
            prefix = (
                self._settings.ipv4_prefix if address.version == 4 else self._settings.ipv6_prefix
            )
            network = str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
        if len(self._networks) >= MAX_BUCKETS:
            self._networks.clear()
        self._networks[client_ip] = network
        return network
