"""The value every resolver stage returns: an rcode and three sections of dnslib RRs.

Stages (local zone, cache, forward) produce an ``Answer``; only the query handler turns it into
bytes.  ``expires_in`` is how long the answer stays true.

An ``Answer`` is an immutable value: frozen, its sections tuples (lists given to the
constructor are copied into tuples), and the dnslib records in it are never changed once it
is made.  A stage that needs another answer makes a new one (``dataclasses.replace``), so one
answer handed to several askers (the forwarding cache's coalesced waiters) can never show one
asker another's edits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

RR = Any  # dnslib.RR: dnslib has no type hints
FOREVER = math.inf
UNREAD = -1  # ``generation`` of an answer that read nothing from the record store


@dataclass(frozen=True, slots=True)
class Answer:
    rcode: int
    authoritative: bool = False
    # The answer section, as RRsets (each rotated as a unit).
    rrsets: Sequence[Sequence[RR]] = ()
    authority: Sequence[RR] = ()
    additional: Sequence[RR] = ()
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
    # The record store's generation when the answer was read from it (``UNREAD``: it was
    # not): together with ``depends`` it says whether the answer is still current.
    generation: int = UNREAD

    def __post_init__(self) -> None:
        if type(self.rrsets) is not tuple or any(type(s) is not tuple for s in self.rrsets):
            object.__setattr__(self, "rrsets", tuple(tuple(rrset) for rrset in self.rrsets))
        if type(self.authority) is not tuple:
            object.__setattr__(self, "authority", tuple(self.authority))
        if type(self.additional) is not tuple:
            object.__setattr__(self, "additional", tuple(self.additional))

    def rotations(self) -> int:
        """How many distinct orderings rotating the answer RRsets gives."""
        return max((len(rrset) for rrset in self.rrsets), default=1)
