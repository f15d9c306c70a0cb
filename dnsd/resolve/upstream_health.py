"""Which upstreams to ask, and in what order: health from consecutive failures, and a policy.

An upstream that fails ``max_fails`` times in a row (a timeout while it replies to nothing, a
refused connection, a failed TLS handshake; a SERVFAIL or REFUSED reply is a reply: it
works) is down: questions skip it while the
forwarder probes it in the background (a ``. NS`` question every ``PROBE_INTERVAL_S``, as
CoreDNS does) until it answers.  Any reply to a probe, or any reply at all, brings it back.
The order among healthy upstreams: ``sequential`` (as configured, those that failed lately
last), ``random``, or ``round_robin``.  No I/O here: the forwarder asks and reports.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

POLICIES = ("sequential", "random", "round_robin")
MAX_FAILS = 3
PROBE_INTERVAL_S = 0.5

U = TypeVar("U", bound=Hashable)


class UpstreamHealth(Generic[U]):
    def __init__(
        self,
        upstreams: Iterable[U],
        max_fails: int = MAX_FAILS,
        policy: str = "sequential",
        shuffle: random.Random | None = None,
    ) -> None:
        """``max_fails`` 0: never down (failing upstreams are only tried last)."""
        if policy not in POLICIES:
            raise ValueError(f"unknown upstream policy {policy!r}")
        self._fails: dict[U, int] = dict.fromkeys(upstreams, 0)
        self.max_fails = max_fails
        self._policy = policy
        self._random = shuffle or random.Random()
        self._turn = 0
        self.down: set[U] = set()

    def order(self, upstreams: list[U]) -> list[U]:
        """The healthy ones among ``upstreams``, in the order to try them (may be empty)."""
        healthy = [u for u in upstreams if u not in self.down]
        if self._policy == "random":
            self._random.shuffle(healthy)
        elif self._policy == "round_robin" and healthy:
            self._turn += 1
            shift = self._turn % len(healthy)
            healthy = healthy[shift:] + healthy[:shift]
        else:
            healthy.sort(key=self._fails.__getitem__)  # stable: configured order among equals
        return healthy

    def failed(self, upstream: U) -> bool:
        """Count a failure; True when it marks the upstream down (start probing it)."""
        self._fails[upstream] = min(self._fails[upstream] + 1, 100)
        reached = self.max_fails and self._fails[upstream] >= self.max_fails
        if reached and upstream not in self.down:
            self.down.add(upstream)
            return True
        return False

    def answered(self, upstream: U) -> bool:
        """A good reply; True when it brings a down upstream back."""
        self._fails[upstream] = 0
        if upstream in self.down:
            self.down.discard(upstream)
            return True
        return False

    def healthy(self, upstream: U) -> bool:
        return upstream not in self.down
