"""The packed-answer cache: the hot path for UDP queries whose answer is already known.

An entry is found by a *normalised key*: the header without its ID, the lower-cased question,
and for EDNS queries the OPT record's fixed part (UDP size, version, DO bit); EDNS options
(cookies, padding) are not part of it, so a client sending a fresh cookie each time still hits.
A query without options, in lower case, is also found by its exact bytes (minus the ID): one
dict lookup.  A hit patches the ID and echoes the question's letter case: no dnslib object, no
await.  The commonest entries (one packed answer for everyone, never expiring: a local name)
and every forwarded answer with one packed form are also in two plain tables the UDP listener
thread reads inline (``UdpServer._serve``), ``FastTables``: by exact bytes and by normalised
key.  A forwarded entry leaves them when its refresh is due (``sweep``, every ``SWEEP_S``, so
it is never served more than ``SWEEP_S`` past it) and comes back when the next asker's
``answer`` has re-stamped it.  The key and the UDP-size clamp are ``answer_key``'s.

Concurrency (one event loop thread, one UDP listener thread per listen address).  It relies
on CPython's GIL: one dict ``get``/``set``/``pop``, one ``next`` of an ``itertools.cycle`` and
one attribute store are each atomic.  The listener threads, without the lock: read
the fast tables and ``_entries`` (one ``get`` each: a row is whole or absent),
read an entry's ``expires``/``recursive``/``variants``/``clients``/``memo``, advance its
rotation (``next``) and count hits, each thread in its own slot of the hit cell
(``cell[slot] += 1``, the slot from ``listener_slot``: no increment is lost).  Everything else
that changes entries or tables holds ``_lock``: ``put``, ``invalidate``, ``sweep``, eviction
(the loop), and the listener threads' writes, ``_restamp`` (which writes only if no other
thread re-stamped since, so older TTLs never replace newer ones), ``_add_size_key`` and a
network entry's per-client ``memo`` (a cache of ``scope_key``).  A reader may still serve an
entry the loop is dropping at that instant: the answer it was a moment before.  ``put`` runs
on the loop right after ``QueryHandler`` has checked that the answer is still current
(``ResolverChain.changed_since``), and ``invalidate`` runs on the loop too, so no store change
falls between that check and the entry's ``depends`` being registered.

Entries hold every rotation of the answer (served in turn), an expiry and the names the answer
depends on: a store change drops only the entries that depend on a name it touched
(``invalidate``).  Forwarded entries are re-stamped in place once a second (their TTL fields
counted down) until the forwarding cache's own expiry, and are served only to clients allowed
to recurse.  When full (entries or bytes) the oldest tenth goes, never the whole cache.
Knows nothing about resolving; ``QueryHandler`` fills it.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, TypeVar

from dnsd.protocol import CLASSIC_UDP_SIZE, HEADER_LEN
from dnsd.resolve.scopes import scope_key
from dnsd.wire.answer_key import clamped, normalised_key
from dnsd.wire.codec import (
    DEFAULT_MAX_UDP_SIZE,
    OPT_FIXED_BYTES,
    opt_well_formed,
    question_end,
    ttl_offsets,
)

ANSWER_CACHE_ENTRIES = 100_000
EVICT_FRACTION = 10  # when full, the oldest 1/EVICT_FRACTION of the entries go
ANSWER_CACHE_BYTES = 64 * 1024 * 1024  # packed bytes held (rotations and per-client copies)
FORWARDED_REFRESH_S = 1.0
SWEEP_S = 0.25  # how often forwarded entries due for a refresh leave the fast tables
# Prefetch: a forwarded entry asked in PREFETCH_ASKS different seconds within the last tenth of
# its lifetime (at least PREFETCH_WINDOW_S) is handed to ``on_popular`` once, to be refreshed
# before it expires.
PREFETCH_ASKS = 2
PREFETCH_WINDOW_S = 2.0


MAX_CLIENTS_PER_ENTRY = 1024
HIT_SLOTS = 64  # per hit cell: one per listener thread (more threads share slots, modulo)
MAX_SIZE_KEYS = 4  # per entry: keys of other UDP sizes that clamp to its own


_TTL = struct.Struct("!I")
FastHit = tuple[bytes, list[int], Callable[[str], bool | None] | None]
Question = tuple[str, int, int]  # (name, type, class) as the resolver takes them
NormalisedHit = tuple[bytes, bytes, list[int], Callable[[str], bool | None] | None]


@dataclass(slots=True)
class _Aging:
    """How to count a forwarded answer's TTLs down without the resolver."""

    template: bytes
    offsets: list[int]
    ttls: list[int]  # as packed at ``born``
    born: float
    final: float  # the forwarding cache drops the answer then: stop re-stamping
    late_asks: int = 0  # re-stamps (seconds it was asked in) within the prefetch window


class _Entry:
    """What every entry has: where it is found (``keys``: the normalised key, and the exact
    alias if any; ``sizes``: keys of other UDP sizes with the same answer), when it stops
    being served as it is, who may have it, what it depends on and what it costs."""

    __slots__ = (
        "alias", "cell", "depends", "expires", "keys", "qend", "question", "recursive", "size",
        "sizes",
    )  # fmt: skip
    # Read on the hot path for either kind: one answer for every asker (``variants``), or
    # per network (``clients``); a forwarded answer counts its TTLs down (``aging``).
    clients: dict[str, Iterator[bytes]] | None = None
    aging: _Aging | None = None
    variants: Iterator[bytes]  # a _SharedEntry's (read only where ``clients`` is None)

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


class _SharedEntry(_Entry):
    """One answer for every asker: its rotations, served in turn."""

    __slots__ = ("aging", "variants")

    def __init__(
        self,
        variants: Iterator[bytes],
        expires: float,
        recursive: bool,
        cell: list[int],
        aging: _Aging | None = None,
    ) -> None:
        super().__init__(expires, recursive, cell)
        self.variants = variants
        self.aging = aging


class _NetworkEntry(_Entry):
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
    if aging is None or now >= aging.final or not isinstance(entry, _SharedEntry):
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
        self, entry: _Entry, template: bytes, allowed: Callable[[str], bool | None] | None
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

    def remove(self, entry: _Entry) -> None:
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


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _locked(
    method: Callable[Concatenate[AnswerCache, _P], _T],
) -> Callable[Concatenate[AnswerCache, _P], _T]:
    """The method runs under the cache's lock (a change the UDP threads may race with)."""

    @functools.wraps(method)
    def locked(self: AnswerCache, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


def _for_client(entry: _Entry, client_ip: str, lock: threading.Lock) -> Iterator[bytes] | None:
    """A network-aware entry's rotations for this asker (None: not known for its networks);
    the memo is read without ``lock`` and written under it."""
    assert isinstance(entry, _NetworkEntry)
    key = entry.memo.get(client_ip)
    if key is None:
        key = scope_key(client_ip, entry.scopes)
        with lock:
            if len(entry.memo) >= MAX_CLIENTS_PER_ENTRY:
                entry.memo.clear()
            entry.memo[client_ip] = key
    return entry.clients.get(key)


class AnswerCache:
    def __init__(
        self,
        allows_recursion: Callable[[str], bool],
        max_entries: int = ANSWER_CACHE_ENTRIES,
        max_bytes: int = ANSWER_CACHE_BYTES,
        recursion_decided: Callable[[str], bool | None] | None = None,
        max_udp_size: int = DEFAULT_MAX_UDP_SIZE,
    ) -> None:
        self._max_udp_size = max(max_udp_size, CLASSIC_UDP_SIZE)
        self._entries: dict[bytes, _Entry] = {}  # normalised keys and exact aliases
        self.tables = FastTables()
        self._lock = threading.Lock()
        self._dependents: dict[str, set[bytes]] = {}  # name -> normalised keys
        self._allows_recursion = allows_recursion
        # The fast tables' check: a cheaper lookup that may answer None ("not decided yet":
        # the asker then takes ``answer``, which asks ``allows_recursion``).
        self._recursion_check = recursion_decided or allows_recursion
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._count = 0
        self.bytes = 0  # packed bytes held
        self.evicted = 0
        self.invalidated = 0
        # (zone, qtype, rcode) -> [hits]: counted here so the hot path never calls a metrics
        # library.
        self.cells: dict[tuple[str, str, str], list[int]] = {}  # HIT_SLOTS counts each
        self._slots = itertools.count()
        # Called (on a listener thread, under the lock: hand it on, quickly) with the question
        # of a forwarded answer popular near its expiry (prefetch); None: no prefetching.
        self.on_popular: Callable[[Question], None] | None = None

    @property
    def hits(self) -> int:
        return sum(sum(cell) for cell in list(self.cells.values()))

    def listener_slot(self) -> int:
        """The hit-cell slot a new listener thread counts its hits in."""
        with self._lock:
            return next(self._slots) % HIT_SLOTS

    def __len__(self) -> int:
        return self._count

    @_locked
    def clear(self) -> None:
        self.tables.clear()
        self._entries.clear()
        self._dependents.clear()
        self._count = self.bytes = 0

    @_locked
    def invalidate(self, names: set[str]) -> None:
        """Drop every entry whose answer depends on one of ``names`` (a store change)."""
        for name in names:
            keys = self._dependents.pop(name, None)
            if keys:
                for key in keys:
                    self.invalidated += self._drop(key)

    @_locked
    def sweep(self, now: float) -> None:
        """Take forwarded entries due for a refresh out of the fast tables (every
        ``SWEEP_S``, on the event loop)."""
        for key in self.tables.take_due(now):
            entry = self._entries.get(key)
            if entry is not None and entry.keys[0] == key and entry.expires <= now:
                self.tables.remove(entry)

    def answer(self, data: bytes, client_ip: str, now: float, slot: int = 0) -> bytes | None:
        """The response to ``data`` if known, else None (the caller takes the slow path).

        The two lookups below repeat their checks on purpose: a shared helper would cost a
        function call per packet on the hot path.  Only a packet that ends like an option-less
        query (class IN's low byte, or an empty OPT RDLEN) can match an exact alias: a cookie
        or padding skips that lookup."""
        entry = self._entries.get(data[2:]) if data and data[-1] < 2 else None
        if entry is not None:
            if entry.expires < now and not self._restamp(entry, now):
                return None
            if entry.recursive and not self._allows_recursion(client_ip):
                return None
            variants = (
                entry.variants
                if entry.clients is None
                else _for_client(entry, client_ip, self._lock)
            )
            if variants is None:
                return None
            entry.cell[slot] += 1
            return data[:2] + next(variants)[2:]
        qend = data.find(b"\x00", HEADER_LEN) + 5
        if qend < 5:
            return None
        if len(data) != qend and not opt_well_formed(data, qend):  # the event loop says why
            return None
        key = data[2:qend].lower() + data[qend : qend + OPT_FIXED_BYTES]
        entry = self._entries.get(key)
        if entry is None:  # perhaps a UDP size that clamps to a cached one's
            fitted = clamped(key, qend - 2, self._max_udp_size)
            entry = None if fitted is key else self._entries.get(fitted)
            if entry is None:
                return None
            self._add_size_key(entry, key)
        if entry.expires < now and not self._restamp(entry, now):
            return None
        if entry.recursive and not self._allows_recursion(client_ip):
            return None
        variants = (
            entry.variants if entry.clients is None else _for_client(entry, client_ip, self._lock)
        )
        if variants is None:
            return None
        entry.cell[slot] += 1
        template = next(variants)
        return data[:2] + template[2:HEADER_LEN] + data[HEADER_LEN:qend] + template[qend:]

    def _count_late_ask(self, entry: _Entry, now: float) -> None:
        aging = entry.aging
        if aging is None or entry.question is None or self.on_popular is None:
            return
        window = max(PREFETCH_WINDOW_S, (aging.final - aging.born) / 10)
        if aging.final - now > window:
            return
        aging.late_asks += 1
        if aging.late_asks == PREFETCH_ASKS:  # once per entry
            self.on_popular(entry.question)

    @_locked
    def _add_size_key(self, entry: _Entry, key: bytes) -> None:
        """Find ``entry`` by ``key`` (its key with another UDP size) from now on, in the fast
        table too (a UDP thread; at most ``MAX_SIZE_KEYS`` per entry)."""
        canonical = entry.keys[0]
        if (
            self._entries.get(canonical) is not entry
            or len(entry.sizes) >= MAX_SIZE_KEYS
            or key in self._entries
        ):
            return
        entry.sizes += (key,)
        self._entries[key] = entry
        self.tables.add_size_key(canonical, key)

    @_locked
    def _restamp(self, entry: _Entry, now: float) -> bool:
        """Re-stamp a forwarded entry and put it back in the fast tables (a UDP thread, once
        a second per entry).  Under the lock, and only if no one did meanwhile: with two
        listen addresses, two threads can find the entry due at once, and the one that read
        the clock first (before a second boundary) must not write its older, one second
        higher TTLs over the other's."""
        if entry.expires >= now:
            return True  # another thread re-stamped it since this one found it due
        if not _restamp(entry, now):
            return False
        self._count_late_ask(entry, now)
        if isinstance(entry, _SharedEntry) and self._entries.get(entry.keys[0]) is entry:
            self._make_fast(entry, next(entry.variants))  # not dropped meanwhile
        return True

    @_locked
    def put(
        self,
        data: bytes,
        variants: list[bytes],
        expires: float,
        recursive: bool,
        client_ip: str | None = None,
        label: tuple[str, str, str] = (".", "", ""),
        aging: tuple[float, float] | None = None,
        depends: tuple[str, ...] = (),
        scopes: tuple[str, ...] = (),
        question: Question | None = None,
    ) -> bytes:
        """Remember the responses to ``data`` (for ``client_ip`` only, when given), to be
        dropped when a name in ``depends`` changes; returns the first one to send, as
        ``answer`` would."""
        key, qend, has_options = normalised_key(data, self._max_udp_size)
        lower = data[HEADER_LEN:qend].lower()
        if (
            key is None
            or question_end(data) != qend
            or any(v[HEADER_LEN:qend].lower() != lower for v in variants)
        ):
            return data[:2] + variants[0][2:]  # not a plain question echoed byte for byte
        templates = [v[:HEADER_LEN] + lower + v[qend:] for v in variants]
        cycle = itertools.cycle(templates)
        cell = self.cells.setdefault(label, [0] * HIT_SLOTS)
        alias = None if has_options else data[2:HEADER_LEN] + lower + data[qend:]
        size = len(key) + sum(len(t) for t in templates)
        if client_ip is None:
            aged = _aging_of(templates[0], *aging) if aging and len(templates) == 1 else None
            entry = _SharedEntry(cycle, expires, recursive, cell, aging=aged)
            entry.qend = qend
            entry.question = question
            self._store(key, alias, entry, depends)
            if len(templates) == 1 and (aged is not None or math.isinf(expires)):
                self._make_fast(entry, templates[0])
        else:
            shared = self._entries.get(key)
            if (
                not isinstance(shared, _NetworkEntry)
                or shared.scopes != scopes
                or len(shared.clients) >= MAX_CLIENTS_PER_ENTRY
            ):
                shared = _NetworkEntry(scopes, expires, recursive, cell)
                self._store(key, alias, shared, depends)
            shared.clients[scope_key(client_ip, scopes)] = cycle
        self._entries[key].size += size
        self.bytes += size
        while self._count > self._max_entries or (self.bytes > self._max_bytes and self._count):
            self._evict()
        first = next(cycle)
        return data[:2] + first[2:HEADER_LEN] + data[HEADER_LEN:qend] + first[qend:]

    def _store(
        self, key: bytes, alias: bytes | None, entry: _Entry, depends: tuple[str, ...]
    ) -> None:
        self._drop(key)
        entry.keys = (key,) if alias is None or alias == key else (key, alias)
        entry.alias = alias
        entry.depends = depends
        for k in entry.keys:
            self._entries[k] = entry
        for name in depends:
            self._dependents.setdefault(name, set()).add(key)
        self._count += 1

    def _drop(self, key: bytes) -> int:
        entry = self._entries.get(key)
        if entry is None or entry.keys[0] != key:
            return 0
        self.tables.remove(entry)
        for k in entry.keys + entry.sizes:
            del self._entries[k]
        for name in entry.depends:
            keys = self._dependents.get(name)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._dependents[name]
        self._count -= 1
        self.bytes -= entry.size
        return 1

    def _make_fast(self, entry: _Entry, template: bytes) -> None:
        self.tables.add(entry, template, self._recursion_check if entry.recursive else None)

    def _evict(self) -> None:
        """The oldest tenth of the entries go (insertion order); one pass over the dict."""
        doomed = [
            key
            for key, entry in itertools.islice(
                self._entries.items(), max(1, self._count // EVICT_FRACTION) * 2
            )
            if entry.keys[0] == key
        ]
        for key in doomed:
            self.evicted += self._drop(key)
