"""The packed-answer cache: the hot path for UDP queries whose answer is already known.

Keyed by the query packet minus its ID, with the question name lower-cased, so a hit is one dict
lookup, the ID patched and the question's letter case echoed: no dnslib object, no await.
Entries hold every rotation of the answer (served in turn) and an expiry: local answers live
until the record store changes (``clear``); forwarded ones are re-stamped in place once a second
(their TTL fields counted down) until the forwarding cache's own expiry.  Forwarded entries are
served only to clients allowed to recurse.
Knows nothing about resolving; ``QueryHandler`` fills it.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from dnsd.wire.codec import HEADER_LEN, ttl_offsets

ANSWER_CACHE_ENTRIES = 100_000
ANSWER_CACHE_BYTES = 64 * 1024 * 1024  # packed bytes held (rotations and per-client copies)
FORWARDED_REFRESH_S = 1.0


MAX_CLIENTS_PER_ENTRY = 1024


_TTL = struct.Struct("!I")


@dataclass(slots=True)
class _Aging:
    """How to count a forwarded answer's TTLs down without the resolver."""

    template: bytes
    offsets: list[int]
    ttls: list[int]  # as packed at ``born``
    born: float
    final: float  # the forwarding cache drops the answer then: stop re-stamping


class _Entry:
    __slots__ = ("aging", "cell", "clients", "expires", "recursive", "variants")

    def __init__(
        self,
        variants: Iterator[bytes],
        expires: float,
        recursive: bool,
        cell: list[int],
        clients: dict[str, Iterator[bytes]] | None = None,
        aging: _Aging | None = None,
    ) -> None:
        self.aging = aging
        self.variants = variants
        self.cell = cell  # hit counter shared by every entry with the same (type, rcode)
        self.expires = expires
        self.recursive = recursive
        # Network-aware answers differ per asker: their rotations are kept per client address.
        self.clients = clients


def _aging_of(template: bytes, born: float, lifetime_s: float) -> _Aging | None:
    offsets = ttl_offsets(template)
    if offsets is None:
        return None
    ttls = [_TTL.unpack_from(template, offset)[0] for offset in offsets]
    return _Aging(template, offsets, ttls, born, born + lifetime_s)


def _restamp(entry: _Entry, now: float) -> bool:
    """Count a forwarded entry's TTLs down in place (no resolver, no dnslib); False when it
    cannot be (a local entry, or the forwarded answer itself has expired)."""
    aging = entry.aging
    if aging is None or now >= aging.final:
        return False
    elapsed = int(now - aging.born)
    packet = bytearray(aging.template)
    for offset, ttl in zip(aging.offsets, aging.ttls, strict=True):
        _TTL.pack_into(packet, offset, max(ttl - elapsed, 0))
    entry.variants = itertools.cycle([bytes(packet)])
    entry.expires = min(aging.born + elapsed + FORWARDED_REFRESH_S, aging.final)
    return True


def _name_end(data: bytes) -> int:
    """End of the question's fixed part, found by the first zero byte after the header.

    The same rule is used for storing and for looking up, so a name with a zero byte inside a
    label only ever gets a different (still exact) key, never a wrong answer.
    """
    end = data.find(b"\x00", HEADER_LEN)
    return end + 5 if end >= 0 else -1


class AnswerCache:
    def __init__(
        self,
        allows_recursion: Callable[[str], bool],
        max_entries: int = ANSWER_CACHE_ENTRIES,
        max_bytes: int = ANSWER_CACHE_BYTES,
    ) -> None:
        self._entries: dict[bytes, _Entry] = {}
        self._allows_recursion = allows_recursion
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self.bytes = 0  # packed bytes put since the last clear (an upper bound of what is held)
        # (qtype, rcode) -> [hits]: counted here so the hot path never calls a metrics library.
        self.cells: dict[tuple[str, str], list[int]] = {}

    @property
    def hits(self) -> int:
        return sum(cell[0] for cell in self.cells.values())

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def answer(self, data: bytes, client_ip: str, now: float) -> bytes | None:
        """The response to ``data`` if known, else None (the caller takes the slow path).

        The two lookups below repeat their checks on purpose: a shared helper would cost a
        function call per packet on the hot path."""
        entry = self._entries.get(data[2:])
        if entry is not None:
            if entry.expires < now and not _restamp(entry, now):
                return None
            if entry.recursive and not self._allows_recursion(client_ip):
                return None
            variants = entry.variants if entry.clients is None else entry.clients.get(client_ip)
            if variants is None:
                return None
            entry.cell[0] += 1
            return data[:2] + next(variants)[2:]
        qend = _name_end(data)
        if qend < 0:
            return None
        entry = self._entries.get(data[2:HEADER_LEN] + data[HEADER_LEN:qend].lower() + data[qend:])
        if entry is None or (entry.expires < now and not _restamp(entry, now)):
            return None
        if entry.recursive and not self._allows_recursion(client_ip):
            return None
        variants = entry.variants if entry.clients is None else entry.clients.get(client_ip)
        if variants is None:
            return None
        entry.cell[0] += 1
        template = next(variants)
        return data[:2] + template[2:HEADER_LEN] + data[HEADER_LEN:qend] + template[qend:]

    def put(
        self,
        data: bytes,
        variants: list[bytes],
        expires: float,
        recursive: bool,
        client_ip: str | None = None,
        label: tuple[str, str] = ("", ""),
        aging: tuple[float, float] | None = None,
    ) -> bytes:
        """Remember the responses to ``data`` (for ``client_ip`` only, when given); returns the
        first one to send, as ``answer`` would."""
        qend = _name_end(data)
        lower = data[HEADER_LEN:qend].lower()
        if qend < 0 or any(v[HEADER_LEN:qend].lower() != lower for v in variants):
            return data[:2] + variants[0][2:]  # question not echoed byte for byte: don't cache
        key = data[2:HEADER_LEN] + lower + data[qend:]
        templates = [v[:HEADER_LEN] + lower + v[qend:] for v in variants]
        size = len(key) + sum(len(t) for t in templates)
        if len(self._entries) >= self._max_entries or self.bytes + size > self._max_bytes:
            self.clear()  # crude but O(1) amortised; refills from the resolver
        self.bytes += size
        cycle = itertools.cycle(templates)
        cell = self.cells.setdefault(label, [0])
        if client_ip is None:
            aged = _aging_of(templates[0], *aging) if aging and len(templates) == 1 else None
            self._entries[key] = _Entry(cycle, expires, recursive, cell, aging=aged)
        else:
            shared = self._entries.get(key)
            if (
                shared is None
                or shared.clients is None
                or len(shared.clients) >= MAX_CLIENTS_PER_ENTRY
            ):
                shared = self._entries[key] = _Entry(iter(()), expires, recursive, cell, {})
            assert shared.clients is not None
            shared.clients[client_ip] = cycle
        first = next(cycle)
        return data[:2] + first[2:HEADER_LEN] + data[HEADER_LEN:qend] + first[qend:]
