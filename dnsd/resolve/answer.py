"""The value every resolver stage returns: an rcode and three sections of dnslib RRs.

Stages (local zone, cache, forward) produce an ``Answer``; only the query handler turns it into
bytes.  ``expires_in`` is how long the answer stays true.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

RR = Any  # dnslib.RR: dnslib has no type hints
FOREVER = math.inf


@dataclass(slots=True)
class Answer:
    rcode: int
    authoritative: bool = False
    # The answer section, as RRsets (each rotated as a unit).
    rrsets: list[list[RR]] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    # Seconds the answer stays true: FOREVER for local answers (until the store changes), the
    # remaining TTL for forwarded ones, 0 for answers that must not be cached (REFUSED, SERVFAIL).
    expires_in: float = 0.0
    recursive: bool = False  # came from forwarding: only for clients allowed to recurse
    per_client: bool = False  # depends on the asker's network (network-aware answers)
    scopes: tuple[str, ...] = ()  # ... namely on which of these networks hold the asker
    follow: str | None = None  # a CNAME chain left our zones here: the rest is upstream's
    enters: str | None = None  # an upstream's chain entered our zones here: the rest is ours
    wire_size: int = 0  # bytes of the upstream reply it was parsed from (forwarded answers)
    # Names whose change in the record store can change this answer (local answers).
    depends: tuple[str, ...] = ()

    def rotations(self) -> int:
        """How many distinct orderings rotating the answer RRsets gives."""
        return max((len(rrset) for rrset in self.rrsets), default=1)
