"""The packed-answer cache's entries and the listener threads' fast tables: what an entry
holds (its rotations or per-network answers, expiry, who may have it, what it depends on),
how a forwarded entry's TTLs are counted down in place (``restamp``), and ``FastTables``,
the rows the UDP listener threads read inline.  Changed only under the cache's lock
(``dnsd.wire.answer_cache`` says who does what).
"""

from __future__ import annotations

import heapq
import itertools
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from dnsd.protocol import HEADER_LEN
from dnsd.wire.codec import ttl_offsets

FORWARDED_REFRESH_S = 1.0  # a forwarded entry is re-stamped (its TTLs counted down) this often

_TTL = struct.Struct("!I")
FastHit = tuple[bytes, list[int], Callable[[str], bool | None] | None]
Question = tuple[str, int, int]  # (name, type, class) as the resolver takes them
NormalisedHit = tuple[bytes, bytes, list[int], Callable[[str], bool | None] | None]


@dataclass(slots=True)
class Aging:
    """How to count a forwarded answer's TTLs down without the resolver."""

    template: bytes
    offsets: list[int]
    ttls: list[int]  # as packed at ``born``
    born: float
    final: float  # the forwarding cache drops the answer then: stop re-stamping
    late_asks: int = 0  # re-stamps (seconds it was asked in) within the prefetch window


class Entry:
    """What every entry has: where it is found (``keys``: the normalised key, and the exact
    alias if any; ``sizes``: keys of other UDP sizes with the same answer), when it stops
    being served as it is, who may have it, what it depends on and what it costs."""

    __slots__ = (
        "alias", "cell", "depends", "expires", "keys", "partial", "qend", "question", "recursive",
        "size", "sizes",
    )  # fmt: skip
    # Read on the hot path for either kind: one answer for every asker (``variants``), or
    # per network (``clients``); a forwarded answer counts its TTLs down (``aging``).
    clients: dict[str, Iterator[bytes]] | None = None
    aging: Aging | None = None
    variants: Iterator[bytes]  # a SharedEntry's (read only where ``clients`` is None)

    def __init__(self, expires: float, recursive: bool, cell: list[int]) -> None:
        self.cell = cell  # hit counter shared by every entry with the same (type, rcode)
        self.expires = expires
        self.recursive = recursive
        self.keys: tuple[bytes, ...] = ()
        self.alias: bytes | None = None
        self.sizes: tuple[bytes, ...] = ()
        self.qend = 0  # where the question ends in the packets
        self.depends: tuple[str, ...] = ()
        self.size = 0
        self.question: Question | None = None  # a forwarded answer's, for prefetching
        self.partial = False  # cut to fit UDP (TC=1, or additional records left out): UDP only


class SharedEntry(Entry):
    """One answer for every asker: its rotations, served in turn."""

    __slots__ = ("aging", "variants")

    def __init__(
        self,
        variants: Iterator[bytes],
        expires: float,
        recursive: bool,
        cell: list[int],
        aging: Aging | None = None,
    ) -> None:
        super().__init__(expires, recursive, cell)
        self.variants = variants
        self.aging = aging


class NetworkEntry(Entry):
    """A network-aware answer: rotations per scope key (the networks among ``scopes`` that
    hold the asker), found through a per-client memo."""

    __slots__ = ("clients", "memo", "scopes")

    def __init__(
        self, scopes: tuple[str, ...], expires: float, recursive: bool, cell: list[int]
    ) -> None:
        super().__init__(expires, recursive, cell)
        self.clients: dict[str, Iterator[bytes]] = {}
        self.scopes = scopes
        self.memo: dict[str, str] = {}


def aging_of(template: bytes, born: float, lifetime_s: float) -> Aging | None:
    offsets = ttl_offsets(template)
    if offsets is None:
        return None
    ttls = [_TTL.unpack_from(template, offset)[0] for offset in offsets]
    return Aging(template, offsets, ttls, born, born + lifetime_s)


def restamp(entry: Entry, now: float) -> bool:
    """Count a forwarded entry's TTLs down in place (no resolver, no dnslib); False when it
    cannot be (a local entry, or the forwarded answer itself has expired)."""
    aging = entry.aging
    if aging is None or now >= aging.final or not isinstance(entry, SharedEntry):
        return False
    elapsed = int(now - aging.born)
    packet = bytearray(aging.template)
    for offset, ttl in zip(aging.offsets, aging.ttls, strict=True):
        _TTL.pack_into(packet, offset, max(ttl - elapsed, 0))
    entry.variants = itertools.cycle([bytes(packet)])
    entry.expires = min(aging.born + elapsed + FORWARDED_REFRESH_S, aging.final)
    return True


class FastTables:
    """The rows the UDP listener threads serve inline (``UdpServer._serve``): entries with
    one packed answer for every asker (local, or forwarded and re-stamped in time).
    ``exact``: the query's bytes without its ID -> (response without its ID, hit cell,
    recursion check or None); ``normalised``: normalised key -> (header without its ID, what
    follows the question, cell, check).  A forwarded row is due for a refresh at its entry's
    expiry (``take_due``).  Changed only under the cache's lock."""

    def __init__(self) -> None:
        self.exact: dict[bytes, FastHit] = {}
        self.normalised: dict[bytes, NormalisedHit] = {}
        self._due: list[tuple[float, bytes]] = []  # (refresh time, key) of forwarded rows

    def add(
        self, entry: Entry, template: bytes, allowed: Callable[[str], bool | None] | None
    ) -> None:
        key, qend = entry.keys[0], entry.qend
        if entry.alias is not None:
            self.exact[entry.alias] = (template[2:], entry.cell, allowed)
        row = (template[2:HEADER_LEN], template[qend:], entry.cell, allowed)
        for k in (key, *entry.sizes):
            self.normalised[k] = row
        if not math.isinf(entry.expires):
            heapq.heappush(self._due, (entry.expires, key))

    def add_size_key(self, canonical: bytes, key: bytes) -> None:
        """``key`` (another UDP size of ``canonical``) serves ``canonical``'s row too."""
        row = self.normalised.get(canonical)
        if row is not None:
            self.normalised[key] = row

    def remove(self, entry: Entry) -> None:
        if entry.alias is not None:
            self.exact.pop(entry.alias, None)
        for key in (entry.keys[0], *entry.sizes):
            self.normalised.pop(key, None)

    def take_due(self, now: float) -> Iterator[bytes]:
        """The keys of rows due for a refresh by ``now`` (each once)."""
        due = self._due
        while due and due[0][0] <= now:
            yield heapq.heappop(due)[1]

    def clear(self) -> None:
        self.exact.clear()
        self.normalised.clear()
        self._due.clear()
