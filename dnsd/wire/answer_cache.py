"""The packed-answer cache: the hot path for UDP queries whose answer is already known.

Keyed by the query packet minus its ID, with the question name lower-cased, so a hit is one dict
lookup, the ID patched and the question's letter case echoed: no dnslib object, no await.
Entries hold every rotation of the answer (served in turn) and an expiry: local answers live
until the record store changes (``clear``), forwarded ones for at most a second so their TTLs
keep counting down.  Forwarded entries are served only to clients allowed to recurse.
Knows nothing about resolving; ``QueryHandler`` fills it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

from dnsd.wire.codec import HEADER_LEN

ANSWER_CACHE_ENTRIES = 100_000
FORWARDED_REFRESH_S = 1.0


MAX_CLIENTS_PER_ENTRY = 1024


class _Entry:
    __slots__ = ("cell", "clients", "expires", "recursive", "variants")

    def __init__(
        self,
        variants: Iterator[bytes],
        expires: float,
        recursive: bool,
        cell: list[int],
        clients: dict[str, Iterator[bytes]] | None = None,
    ) -> None:
        self.variants = variants
        self.cell = cell  # hit counter shared by every entry with the same (type, rcode)
        self.expires = expires
        self.recursive = recursive
        # Network-aware answers differ per asker: their rotations are kept per client address.
        self.clients = clients


def _name_end(data: bytes) -> int:
    """End of the question's fixed part, found by the first zero byte after the header.

    The same rule is used for storing and for looking up, so a name with a zero byte inside a
    label only ever gets a different (still exact) key, never a wrong answer.
    """
    end = data.find(b"\x00", HEADER_LEN)
    return end + 5 if end >= 0 else -1


class AnswerCache:
    def __init__(
        self, allows_recursion: Callable[[str], bool], max_entries: int = ANSWER_CACHE_ENTRIES
    ) -> None:
        self._entries: dict[bytes, _Entry] = {}
        self._allows_recursion = allows_recursion
        self._max_entries = max_entries
        # (qtype, rcode) -> [hits]: counted here so the hot path never calls a metrics library.
        self.cells: dict[tuple[str, str], list[int]] = {}

    @property
    def hits(self) -> int:
        return sum(cell[0] for cell in self.cells.values())

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def answer(self, data: bytes, client_ip: str, now: float) -> bytes | None:
        """The response to ``data`` if known, else None (the caller takes the slow path)."""
        entry = self._entries.get(data[2:])
        if entry is not None:
            if entry.expires < now or (entry.recursive and not self._allows_recursion(client_ip)):
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
        if (
            entry is None
            or entry.expires < now
            or (entry.recursive and not self._allows_recursion(client_ip))
        ):
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
    ) -> bytes:
        """Remember the responses to ``data`` (for ``client_ip`` only, when given); returns the
        first one to send, as ``answer`` would."""
        qend = _name_end(data)
        lower = data[HEADER_LEN:qend].lower()
        if qend < 0 or any(v[HEADER_LEN:qend].lower() != lower for v in variants):
            return data[:2] + variants[0][2:]  # question not echoed byte for byte: don't cache
        if len(self._entries) >= self._max_entries:
            self._entries.clear()  # crude but O(1) amortised; refills from the resolver
        key = data[2:HEADER_LEN] + lower + data[qend:]
        templates = [v[:HEADER_LEN] + lower + v[qend:] for v in variants]
        cycle = itertools.cycle(templates)
        cell = self.cells.setdefault(label, [0])
        if client_ip is None:
            self._entries[key] = _Entry(cycle, expires, recursive, cell)
        else:
            entry = self._entries.get(key)
            if (
                entry is None
                or entry.clients is None
                or len(entry.clients) >= MAX_CLIENTS_PER_ENTRY
            ):
                entry = self._entries[key] = _Entry(iter(()), expires, recursive, cell, {})
            assert entry.clients is not None
            entry.clients[client_ip] = cycle
        first = next(cycle)
        return data[:2] + first[2:HEADER_LEN] + data[HEADER_LEN:qend] + first[qend:]
