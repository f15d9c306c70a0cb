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
import itertools
import math
import threading
from collections.abc import Callable, Iterator
from typing import Concatenate, ParamSpec, TypeVar

from dnsd.protocol import CLASSIC_UDP_SIZE, HEADER_LEN
from dnsd.resolve.scopes import scope_key
from dnsd.wire.answer_entries import (
    Entry,
    FastTables,
    NetworkEntry,
    Question,
    SharedEntry,
    aging_of,
    restamp,
)
from dnsd.wire.answer_key import clamped, normalised_key
from dnsd.wire.codec import (
    DEFAULT_MAX_UDP_SIZE,
    OPT_FIXED_BYTES,
    opt_well_formed,
    question_end,
)

ANSWER_CACHE_ENTRIES = 100_000
EVICT_FRACTION = 10  # when full, the oldest 1/EVICT_FRACTION of the entries go
ANSWER_CACHE_BYTES = 64 * 1024 * 1024  # packed bytes held (rotations and per-client copies)
SWEEP_S = 0.25  # how often forwarded entries due for a refresh leave the fast tables
# Prefetch: a forwarded entry asked in PREFETCH_ASKS different seconds within the last tenth of
# its lifetime (at least PREFETCH_WINDOW_S) is handed to ``on_popular`` once, to be refreshed
# before it expires.
PREFETCH_ASKS = 2
PREFETCH_WINDOW_S = 2.0


MAX_CLIENTS_PER_ENTRY = 1024
HIT_SLOTS = 64  # per hit cell: one per listener thread (more threads share slots, modulo)
TCP_SLOT = 0  # the TCP listeners' (the event loop's) slot; UDP listener threads get the others
MAX_SIZE_KEYS = 4  # per entry: keys of other UDP sizes that clamp to its own


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


def _for_client(entry: Entry, client_ip: str, lock: threading.Lock) -> Iterator[bytes] | None:
    """A network-aware entry's rotations for this asker (None: not known for its networks);
    the memo is read without ``lock`` and written under it."""
    assert isinstance(entry, NetworkEntry)
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
        self._entries: dict[bytes, Entry] = {}  # normalised keys and exact aliases
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
        """UDP hits (every slot but ``TCP_SLOT``)."""
        return sum(sum(cell) - cell[TCP_SLOT] for cell in list(self.cells.values()))

    def hits_by_label(self) -> dict[tuple[str, str, str, str], int]:
        """(zone, type, rcode, transport) -> hits, for /metrics (series with hits only for
        TCP)."""
        counts: dict[tuple[str, str, str, str], int] = {}
        for label, cell in list(self.cells.items()):
            counts[(*label, "udp")] = sum(cell) - cell[TCP_SLOT]
            if cell[TCP_SLOT]:
                counts[(*label, "tcp")] = cell[TCP_SLOT]
        return counts

    def listener_slot(self) -> int:
        """The hit-cell slot a new UDP listener thread counts its hits in."""
        with self._lock:
            return 1 + next(self._slots) % (HIT_SLOTS - 1)

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

    def answer(
        self, data: bytes, client_ip: str, now: float, slot: int = 1, tcp: bool = False
    ) -> bytes | None:
        """The response to ``data`` if known, else None (the caller takes the slow path).
        Over TCP (``tcp``), an answer cut to fit UDP is not known.

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
            if variants is None or (tcp and entry.partial):
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
        if variants is None or (tcp and entry.partial):
            return None
        entry.cell[slot] += 1
        template = next(variants)
        return data[:2] + template[2:HEADER_LEN] + data[HEADER_LEN:qend] + template[qend:]

    def _count_late_ask(self, entry: Entry, now: float) -> None:
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
    def _add_size_key(self, entry: Entry, key: bytes) -> None:
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
    def _restamp(self, entry: Entry, now: float) -> bool:
        """Re-stamp a forwarded entry and put it back in the fast tables (a UDP thread, once
        a second per entry).  Under the lock, and only if no one did meanwhile: with two
        listen addresses, two threads can find the entry due at once, and the one that read
        the clock first (before a second boundary) must not write its older, one second
        higher TTLs over the other's."""
        if entry.expires >= now:
            return True  # another thread re-stamped it since this one found it due
        if not restamp(entry, now):
            return False
        self._count_late_ask(entry, now)
        if isinstance(entry, SharedEntry) and self._entries.get(entry.keys[0]) is entry:
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
        whole: bool = True,
    ) -> bytes:
        """Remember the responses to ``data`` (for ``client_ip`` only, when given), to be
        dropped when a name in ``depends`` changes; returns the first one to send, as
        ``answer`` would.  Not ``whole`` (cut to fit UDP): never answered over TCP."""
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
            aged = aging_of(templates[0], *aging) if aging and len(templates) == 1 else None
            entry = SharedEntry(cycle, expires, recursive, cell, aging=aged)
            entry.qend = qend
            entry.question = question
            self._store(key, alias, entry, depends)
            if len(templates) == 1 and (aged is not None or math.isinf(expires)):
                self._make_fast(entry, templates[0])
        else:
            shared = self._entries.get(key)
            if (
                not isinstance(shared, NetworkEntry)
                or shared.scopes != scopes
                or len(shared.clients) >= MAX_CLIENTS_PER_ENTRY
            ):
                shared = NetworkEntry(scopes, expires, recursive, cell)
                self._store(key, alias, shared, depends)
            shared.clients[scope_key(client_ip, scopes)] = cycle
        stored = self._entries[key]
        stored.size += size
        stored.partial |= not whole  # per-network variants may differ: any cut one counts
        self.bytes += size
        while self._count > self._max_entries or (self.bytes > self._max_bytes and self._count):
            self._evict()
        first = next(cycle)
        return data[:2] + first[2:HEADER_LEN] + data[HEADER_LEN:qend] + first[qend:]

    def _store(
        self, key: bytes, alias: bytes | None, entry: Entry, depends: tuple[str, ...]
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

    def _make_fast(self, entry: Entry, template: bytes) -> None:
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
