"""The etcd source: an in-memory mirror of every SkyDNS-format key under the prefix.

A thread lists the prefix once, then watches it from the next revision; watch responses are
applied in batches.  After any disconnect it re-watches from the last revision seen (nothing
missed); when that revision has been compacted (checked before re-watching, and reported by the
watch) it lists again.  While etcd is unreachable the
mirror keeps its last content (state ``degraded``) and answers go on.  etcd is never read on
the query path: the mirror turns keys into records (``skydns``) and writes them to the store,
one owner per name (a name answers for its whole subtree, below the zone apex).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import sys
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from dnsd.admission import name_problem, value_problem
from dnsd.config import EtcdConfig
from dnsd.heap import Settler
from dnsd.logs import Throttled, event
from dnsd.records import (
    WILDCARD_LABELS,
    Record,
    RecordStore,
    ancestors,
    wildcard_parts,
)
from dnsd.sources.errors import explain
from dnsd.sources.etcd_client import make_client
from dnsd.sources.lifecycle import Backoff, LoopHand, SourceHealth, Threads
from dnsd.sources.skydns import (
    Service,
    apex_service_records,
    cname_for,
    key_to_name,
    parse_value,
    published_records,
    records_for,
    service_records,
    speaks_for_apex,
    stands_for,
    target_of,
)
from dnsd.stats import Stats

logger = logging.getLogger(__name__)

SOURCE = "etcd"
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
BATCH_WAIT_S = 0.005  # gather a burst of watch events into one hand-over to the loop
SLICE_S = 0.003  # the longest the event loop applies changes before serving again
SLICE_KEYS = 64  # changes per store update within a slice
LEASE_POLL_S = 5.0  # how often the publishing nodes' lease time left is read
PAGE_KEYS = 1000  # keys per page of a list (fewer while a page is over gRPC's limit)


MAX_WILDCARD_NAMES = 1000  # names one wildcard answer may gather: bounds a hostile query's cost
_LOGGED_PER_REASON = 10  # bad keys of one kind logged one by one; then a throttled summary
_throttled = Throttled(logger, interval_s=60.0)

# (key, value or None for a delete, lease TTL[, lease ID])
Change = tuple[str, bytes | None, int] | tuple[str, bytes | None, int, int]


def _parent(name: str) -> str:
    return name.partition(".")[2] or "."


@dataclass(slots=True)
class NodeKeys:
    """What one publishing node holds in etcd: its keys, and the lease they hang on."""

    keys: int = 0
    lease: int = 0


def _name_owner(name: str) -> str:
    """The store owner of what a name answers as a whole (its CNAME, or every record of a
    name whose keys carry groups); a key is its own owner, and keys start with the prefix."""
    return "=" + name


class Mirror:
    """Keys -> services -> records, applied per key.  Runs on the event loop thread only.

    Each key is one owner in the store and offers its records at its own name and at every
    ancestor below the apex (a name answers for its subtree), so a change costs what the key
    gives, whatever the size of the subtree.  Two things depend on the keys beside it and
    are owned by the name instead (recomputed for the names a change touched): the CNAME of
    a name with exactly one key, and every record of a name whose subtree holds keys with a
    ``group`` (CoreDNS's group filter reads the whole subtree; such names cost their subtree
    per change, groups being rare).  Any value that cannot be served is refused here with a
    reason, and anything that still fails while one key is applied costs that key only.
    """

    def __init__(self, store: RecordStore, prefix: str, zones: list[str], ttl: int) -> None:
        self._store = store
        self._prefix = prefix.rstrip("/")
        self._zones = zones
        self._ttl = ttl
        self.services: dict[str, Service] = {}
        # name -> keys at or below it (one key as itself, most names hold one: no set)
        self._subtree: dict[str, str | set[str]] = {}
        self._children: dict[str, set[str]] = {}  # name -> names one label below it (wildcards)
        self._grouped: dict[str, int] = {}  # name -> keys at or below it that carry a group
        self._owners: dict[str, tuple[str, ...]] = {}  # key -> the names it offers records at
        self.nodes: dict[str, NodeKeys] = {}  # publishing node (dnsd_node) -> its keys
        self.bad_keys: dict[str, str] = {}  # key -> why it was skipped
        self._logged_reasons: dict[str, int] = {}

    def _owner_names(self, name: str) -> list[str]:
        """The name and its ancestors down to (not including) its zone's apex; the apex too
        for keys under ``ns.dns.<zone>`` and ``apex.dns.<zone>``."""
        zone = next((z for z in self._zones if name == z or name.endswith("." + z)), None)
        if zone is None:
            return [name]
        found = []
        for ancestor in ancestors(name):
            if ancestor == zone or len(ancestor) < len(zone):
                break
            found.append(sys.intern(ancestor))  # shared by every record at the name
        if speaks_for_apex(name, zone):
            found.append(zone)
        return found

    def replace_all(self, entries: Iterable[Change]) -> int:
        """The whole prefix as listed: keys not in ``entries`` are deleted."""
        self.apply(self.relist_changes(entries))
        return len(self.services)

    def relist_changes(self, entries: Iterable[Change]) -> list[Change]:
        """The changes that make the mirror hold exactly ``entries``."""
        changes: list[Change] = list(entries)
        listed = {entry[0].rstrip("/") for entry in changes}
        gone = [key for key in (*self.services, *self.bad_keys) if key not in listed]
        return [(key, None, 0) for key in gone] + changes

    def apply(self, changes: Iterable[Change]) -> None:
        """Changes in revision order, as one store update."""
        owners: dict[str, list[Record]] = {}
        touched: set[str] = set()  # names whose name-level records may differ
        regroup: set[str] = set()  # names whose group state flipped: their keys' records too
        for key, value, lease_ttl, *lease in changes:
            key = key.rstrip("/")
            try:
                service = None if value is None else self._parse(key, value, lease_ttl, *lease)
            except ValueError as exc:
                service = None
                self._refuse(key, str(exc))
            else:
                self.bad_keys.pop(key, None)
            try:
                records = self._set_key(key, service, touched, regroup)
            except Exception as exc:  # a bug must cost this key only, never the batch
                logger.exception("etcd key %s: could not apply", key)
                with contextlib.suppress(Exception):
                    self._set_key(key, None, touched, regroup)
                self._refuse(key, f"internal error: {type(exc).__name__}")
                records = []
            if records is not None:
                owners[key] = records
        for name in regroup:
            for key in self._keys_at(name):
                owners[key] = self._key_records(self.services[key])
        for name in touched:
            owners[_name_owner(name)] = self._name_records(name)
        self._store.update_owners(SOURCE, owners)

    def _parse(self, key: str, value: bytes, lease_ttl: int, lease: int = 0) -> Service:
        name = key_to_name(key, self._prefix)
        problem = name_problem(name)
        if problem is not None:
            raise ValueError(f"the key's name is not servable: {problem}")
        service = parse_value(key, name, value, lease_ttl, lease)  # an address canonical
        labels = name.split(".")
        if service.node:  # dnsd's own: ``*`` only as the first label it stands for (RFC 4592)
            if "*" in labels[:1] + labels[2:]:
                raise ValueError("a '*' label other than first in the name the key stands for")
        elif "*" in labels:  # SkyDNS wildcards are in questions, never in keys
            raise ValueError("a key's name cannot hold a '*' label")
        return service

    def _refuse(self, key: str, why: str) -> None:
        if self.bad_keys.get(key) == why:
            return
        self.bad_keys[key] = why
        kind = why.split(":", 1)[0]
        seen = self._logged_reasons.get(kind, 0)
        if seen < _LOGGED_PER_REASON:
            self._logged_reasons[kind] = seen + 1
            logger.warning("etcd key %s skipped: %s", key, why, extra=event("etcd_bad_key", SOURCE))
        else:
            _throttled.warning(
                f"etcd bad key {kind}",
                "etcd keys skipped (%s), e.g. %s: %s; %d skipped in all, listed in /records",
                kind,
                key,
                why,
                len(self.bad_keys),
            )

    def _set_key(
        self, key: str, service: Service | None, touched: set[str], regroup: set[str]
    ) -> list[Record] | None:
        """Index ``service`` as the key's value (None: the key is gone); its records (None:
        unchanged).  dnsd's own keys are counted per node and nothing else: they answer on
        their own, so no name-level state depends on them."""
        old = self.services.pop(key, None)
        if old is not None and old == service:  # the same value again (a relist, a republish)
            self.services[key] = old
            return None
        if old is not None and old.node:
            self._count_node(old, -1)
        elif old is not None:
            for owner in self._owners.pop(key):
                touched.add(owner)
                if old.group and self._count_group(owner, -1):
                    regroup.add(owner)
                if not self._drop_key(owner, key):
                    continue
                if owner not in self._zones:
                    siblings = self._children[_parent(owner)]
                    siblings.discard(owner)
                    if not siblings:
                        del self._children[_parent(owner)]
        if service is None:
            return []
        self.services[key] = service
        if service.node:
            self._count_node(service, +1)
            return self._key_records(service)
        owners = self._owners[key] = tuple(self._owner_names(service.name))
        for owner in owners:
            touched.add(owner)
            if self._add_key(owner, key) and owner not in self._zones:
                # wildcards match names below an apex only
                self._children.setdefault(_parent(owner), set()).add(owner)
            if service.group and self._count_group(owner, +1):
                regroup.add(owner)
        return self._key_records(service)

    def names_of(self, key: str) -> tuple[str, ...]:
        """The names a held key offers records at."""
        service = self.services.get(key)
        if service is None:
            return ()
        return (stands_for(service),) if service.node else self._owners[key]

    def _count_node(self, service: Service, step: int) -> None:
        entry = self.nodes.get(service.node)
        if entry is None:
            entry = self.nodes[service.node] = NodeKeys()
        entry.keys += step
        if step > 0 and service.lease:
            entry.lease = service.lease
        if not entry.keys:
            del self.nodes[service.node]

    def _keys_at(self, name: str) -> Collection[str]:
        keys = self._subtree.get(name)
        if keys is None:
            return ()
        return (keys,) if type(keys) is str else keys

    def _add_key(self, name: str, key: str) -> bool:
        """Note ``key`` at or below ``name``; True when the name is new."""
        keys = self._subtree.get(name)
        if keys is None:
            self._subtree[name] = key
            return True
        if type(keys) is str:
            if keys != key:
                self._subtree[name] = {keys, key}
        else:
            keys.add(key)  # type: ignore[union-attr]
        return False

    def _drop_key(self, name: str, key: str) -> bool:
        """Forget ``key`` at or below ``name``; True when the name is gone."""
        keys = self._subtree[name]
        if type(keys) is str:
            del self._subtree[name]
            return True
        keys.discard(key)  # type: ignore[union-attr]
        if len(keys) == 1:
            self._subtree[name] = next(iter(keys))
        return False

    def _count_group(self, name: str, step: int) -> bool:
        """Count a grouped key in or out of ``name``; True when the name's mode flipped."""
        count = self._grouped.get(name, 0) + step
        if count:
            self._grouped[name] = count
        else:
            del self._grouped[name]
        return count == (1 if step > 0 else 0)

    def _key_records(self, service: Service) -> list[Record]:
        if service.node:
            return published_records(service, self._ttl)
        records: list[Record] = []
        target = target_of(service) if service.host else None
        for owner in self._owners[service.key]:
            if owner in self._zones:
                records += apex_service_records(owner, service, self._ttl)
            elif owner not in self._grouped:
                records += service_records(owner, service, self._ttl, target)
        return records

    def _name_records(self, name: str) -> list[Record]:
        keys = self._keys_at(name)  # (never dnsd's own keys: they answer on their own)
        if not keys or name in self._zones:
            return []
        if name in self._grouped:
            return records_for(name, [self.services[k] for k in keys], self._ttl)
        if len(keys) == 1:
            return cname_for(name, [self.services[k] for k in keys], self._ttl)
        return []

    def wildcard(self, pattern: str, rtype: str) -> list[Record]:
        """SkyDNS wildcards over etcd names only: a ``*`` or ``any`` label matches any one
        label.  Walks the name tree from the pattern's fixed suffix, so the cost follows the
        names at the wildcard's level, not every name held.  The matched names' keys answer
        together, as one name would (groups and SRV weights across the whole answer)."""
        labels, suffix = wildcard_parts(pattern)
        nodes = {suffix}
        for label in reversed(labels):
            if label in WILDCARD_LABELS:
                nodes = set(
                    itertools.islice(
                        (child for node in nodes for child in self._children.get(node, ())),
                        MAX_WILDCARD_NAMES,
                    )
                )
            else:
                nodes = {f"{label}.{node}" for node in nodes} & self._subtree.keys()
            if not nodes:
                return []
        # A name the static zone holds brings none of its keys.
        services = [
            self.services[key]
            for node in sorted(nodes)
            if not self._store.held_by_static(node)
            for key in self._keys_at(node)
        ]
        return [
            record
            for record in records_for(pattern, services, self._ttl)
            if record.rtype == rtype and value_problem(record) is None
        ]


class EtcdSource:
    """Follows the prefix on a thread; the event loop applies what it read in slices of at
    most ``SLICE_S`` of CPU, so a bulk change never holds the loop for long: queries (and the
    UDP listener threads' misses) are answered between slices."""

    name = SOURCE

    def __init__(
        self,
        store: RecordStore,
        settings: EtcdConfig,
        zones: list[str],
        ttl: int,
        stats: Stats,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.mirror = Mirror(store, settings.prefix, zones, ttl)
        self._settings = settings
        self._stats = stats
        self._client_factory = client_factory or (lambda: make_client(settings))
        self._threads = Threads()
        self._stopping = self._threads.stopping
        self._hand = LoopHand()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lease_ttls: dict[int, int] = {}
        self._node_leases: frozenset[int] = frozenset()  # for the watch thread to poll
        self._lease_left: dict[int, tuple[int, float]] = {}  # lease -> (TTL left, when read)
        self._clock = time.monotonic
        self._backlog: deque[Change | Callable[[], None]] = deque()
        self._draining = False
        self._heap = Settler()  # after bulk changes: no full GC pause over the whole store
        self.state = "down"
        self.reason = "not connected yet"
        self.revision = 0
        self.listed = False  # a whole list has been applied
        self.reconnects = 0
        self.via = ""

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._hand.bind(self._loop)
        self._threads.start(self._follow, "etcd-watch")
        try:
            await asyncio.Event().wait()
        finally:
            self.stop()

    def stop(self) -> None:
        self._threads.stop()

    def join(self, timeout_s: float) -> None:
        self._threads.join(timeout_s)

    def health(self) -> SourceHealth:
        """OK once connected and the first list is applied (a restarted dnsd is not ready
        while it would still answer NXDOMAIN for names in etcd)."""
        listing = self.state == "ok" and not self.listed
        return SourceHealth.of(
            self.state == "ok" and self.listed,
            "applying the first list" if listing else self.reason,
            self.listed,
            revision=self.revision,
            backlog=len(self._backlog),
        )

    # --- watch thread ----------------------------------------------------------------------
    def _follow(self) -> None:
        backoff = Backoff(BACKOFF_MIN_S, BACKOFF_MAX_S)
        listed = False
        while not self._stopping.is_set():
            client = None
            try:
                client = self._client_factory()
                if listed and not self._history_intact(client):
                    logger.info("etcd revision %d compacted: listing again", self.revision)
                    listed = False
                if not listed:
                    self._list(client)
                    listed = True
                events: queue.Queue[Any] = queue.Queue()
                watch_id = client.add_watch_prefix_callback(
                    self._settings.prefix, events.put, start_revision=self.revision + 1
                )
                endpoint = getattr(client, "endpoint_in_use", None)
                self._hand(self._set_state, "ok", f"via {getattr(endpoint, 'netloc', '?')}")
                backoff.reset()
                try:
                    self._consume(client, events)
                finally:
                    with contextlib.suppress(Exception):
                        client.cancel_watch(watch_id)
            except Exception as exc:
                if type(exc).__name__ == "RevisionCompactedError":
                    logger.info("etcd revision %d compacted: listing again", self.revision)
                    listed = False
                    continue
                if _too_big(exc):  # a watch reply over the message limit: pages never are
                    logger.warning("etcd watch reply too big: listing again, in pages")
                    listed = False
                self.reconnects += 1
                self._hand(self._set_state, "degraded", describe(exc, client))
                self._stopping.wait(backoff.next())
            finally:
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()

    def _history_intact(self, client: Any) -> bool:
        """Whether every change after the last revision seen is still in etcd's history.  A
        read at that revision fails once it is compacted; checked before resuming a watch,
        since a watch resumed at exactly the compaction revision is accepted but silently
        misses a delete whose tombstone the compaction removed."""
        try:
            client.get_prefix_response(
                self._settings.prefix, revision=self.revision, count_only=True
            )
        except Exception as exc:
            if "compacted" in str(exc):
                return False
            raise
        return True

    def _list(self, client: Any) -> None:
        """Reads the prefix in pages, all at the first page's revision, so no reply nears
        gRPC's message limit whatever the prefix holds (a page that still does, with a few
        values of megabytes, is asked again smaller)."""
        prefix = self._settings.prefix.encode()
        end = _range_end(prefix)
        start, revision, limit = prefix, 0, PAGE_KEYS
        entries: list[Change] = []
        while True:
            try:
                response = client.get_range_response(
                    start, end, limit=limit, revision=revision or None
                )
            except Exception as exc:
                if _too_big(exc) and limit > 1:
                    limit = max(limit // 8, 1)
                    continue
                raise
            revision = revision or response.header.revision
            entries += [
                (
                    kv.key.decode(errors="replace"),
                    kv.value,
                    self._lease_ttl(client, kv.lease),
                    kv.lease,
                )
                for kv in response.kvs
            ]
            if not response.more or not response.kvs:
                break
            start = response.kvs[-1].key + b"\0"
            limit = min(limit * 2, PAGE_KEYS)
        self.revision = revision
        self._hand(self._relist, entries, revision)

    def _consume(self, client: Any, events: queue.Queue[Any]) -> None:
        polled = 0.0
        while not self._stopping.is_set():
            if self._clock() - polled >= LEASE_POLL_S:
                polled = self._clock()
                self._poll_leases(client)
            try:
                first = events.get(timeout=1.0)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.monotonic() + BATCH_WAIT_S
            while time.monotonic() < deadline:
                try:
                    batch.append(events.get(timeout=max(deadline - time.monotonic(), 0)))
                except queue.Empty:
                    break
            changes: list[Change] = []
            for response in batch:
                if isinstance(response, Exception):
                    if changes:
                        self._hand(self._enqueue, changes)
                    raise response
                for change in response.events:
                    key = change.key.decode(errors="replace")
                    if type(change).__name__ == "DeleteEvent":
                        changes.append((key, None, 0))
                    else:
                        lease = getattr(change, "lease", 0) or 0
                        ttl = self._lease_ttl(client, lease)
                        changes.append((key, change.value, ttl, lease))
                self.revision = max(self.revision, response.header.revision)
            if changes:
                self._hand(self._enqueue, changes)

    def _poll_leases(self, client: Any) -> None:
        """How long each publishing node's lease has left (for the nodes view)."""
        left: dict[int, tuple[int, float]] = {}
        for lease in self._node_leases:
            with contextlib.suppress(Exception):
                left[lease] = (int(client.get_lease_info(lease).TTL), self._clock())
        self._lease_left = left

    def _lease_ttl(self, client: Any, lease_id: int) -> int:
        if not lease_id:
            return 0
        known = self._lease_ttls.get(lease_id)
        if known is None:
            try:
                known = int(client.get_lease_info(lease_id).grantedTTL)
            except Exception:
                known = 0
            if len(self._lease_ttls) > 10_000:
                self._lease_ttls.clear()
            self._lease_ttls[lease_id] = known
        return known

    # --- event loop --------------------------------------------------------------------------
    def _relist(self, entries: list[Change], revision: int) -> None:
        """A whole list: its changes (what differs from the mirror, and deletes for keys no
        longer there) are queued behind anything pending, then it counts as listed."""
        keys = len(entries)

        def listed() -> None:
            self.listed = True
            logger.info(
                "etcd listed: %d keys (%d skipped), revision %d",
                keys - len(self.mirror.bad_keys),
                len(self.mirror.bad_keys),
                revision,
                extra=event("etcd_listed", SOURCE),
            )

        self._enqueue(self.mirror.relist_changes(entries))
        self._enqueue([listed])

    def _enqueue(self, items: list[Change] | list[Callable[[], None]]) -> None:
        self._backlog.extend(items)
        if not self._draining:
            self._draining = True
            self._drain()

    def _drain(self) -> None:
        """Apply the backlog for at most ``SLICE_S``, then let the loop serve; go on after."""
        deadline = time.perf_counter() + SLICE_S
        backlog = self._backlog
        try:
            while backlog:
                chunk: list[Change] = []
                while backlog and len(chunk) < SLICE_KEYS:
                    item = backlog[0]
                    if callable(item):
                        if chunk:
                            break
                        backlog.popleft()
                        item()
                        continue
                    chunk.append(item)
                    backlog.popleft()
                if chunk:
                    self.mirror.apply(chunk)
                    self._stats.etcd_updates += len(chunk)
                    self._heap.changed(len(chunk))
                if time.perf_counter() >= deadline:
                    break
        finally:
            self._stats.etcd_bad_keys = len(self.mirror.bad_keys)
            self._node_leases = frozenset(n.lease for n in self.mirror.nodes.values() if n.lease)
            if backlog and self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon(self._drain)
            else:
                self._draining = False

    # --- what /records and /nodes show (event loop) ------------------------------------------
    def node_of(self, owner: str) -> str | None:
        """The node that published the key ``owner`` (dnsd's own keys), else None."""
        service = self.mirror.services.get(owner)
        return service.node or None if service is not None else None

    def nodes(self) -> list[dict[str, Any]]:
        """Every publishing node: its keys, its lease and the seconds the lease has left (as
        last read from etcd, counted down since; None before the first read or when the
        lease is gone)."""
        now, rows = self._clock(), []
        for node, held in sorted(self.mirror.nodes.items()):
            known = self._lease_left.get(held.lease)
            left = None
            if known is not None and known[0] >= 0:
                left = round(max(known[0] - (now - known[1]), 0.0), 1)
            rows.append({"node": node, "keys": held.keys,
                         "lease": f"{held.lease:x}" if held.lease else None,
                         "lease_left_s": left})  # fmt: skip
        return rows

    def unserved(self) -> Iterator[tuple[str, str, str]]:
        """(name, key, reason) for every key skipped as unservable."""
        for key, why in list(self.mirror.bad_keys.items()):
            yield key_to_name(key, self._settings.prefix), key, why

    def _set_state(self, state: str, detail: str) -> None:
        """``detail``: for "ok" the member in use, otherwise why not."""
        if state == "ok":
            if state != self.state or detail != self.via:
                logger.info(
                    "etcd watching %s from revision %d %s",
                    self._settings.prefix,
                    self.revision + 1,
                    detail,
                    extra=event("etcd_watching", SOURCE),
                )
            self.via, self.reason = detail, ""
        elif state != self.state:
            logger.warning(
                "etcd %s: %s; answering from the last mirror, retrying",
                state,
                detail,
                extra=event("etcd_lost", SOURCE),
            )
            self.reason = detail
        self.state = state


def _range_end(prefix: bytes) -> bytes:
    """The first key after every key starting with ``prefix`` (etcd's prefix range end)."""
    trimmed = prefix.rstrip(b"\xff")
    return trimmed[:-1] + bytes([trimmed[-1] + 1]) if trimmed else b"\0"


def _too_big(exc: BaseException) -> bool:
    code = getattr(exc, "code", None)
    return callable(code) and getattr(code(), "name", "") == "RESOURCE_EXHAUSTED"


def describe(exc: BaseException, client: Any) -> str:
    """Why etcd could not be used, in words, naming the endpoint when known."""
    endpoint = getattr(getattr(client, "endpoint_in_use", None), "netloc", None)
    where = f" ({endpoint})" if endpoint else ""
    return explain(exc) + where
