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
import time
from collections.abc import Callable, Iterable
from typing import Any

from dnsd.admission import name_problem, value_problem
from dnsd.config import EtcdConfig
from dnsd.logs import event
from dnsd.records import WILDCARD_LABELS, Record, RecordStore, ancestors, wildcard_parts
from dnsd.sources.errors import reason
from dnsd.sources.etcd_client import make_client
from dnsd.sources.lifecycle import Backoff, LoopHand, SourceHealth, Threads
from dnsd.sources.skydns import (
    Service,
    apex_records,
    key_to_name,
    parse_value,
    ptr_record,
    records_for,
    speaks_for_apex,
)
from dnsd.stats import Stats

logger = logging.getLogger(__name__)

SOURCE = "etcd"
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
BATCH_WAIT_S = 0.005  # gather a burst of watch events into one store update


MAX_WILDCARD_NAMES = 1000  # names one wildcard answer may gather: bounds a hostile query's cost


def _parent(name: str) -> str:
    return name.partition(".")[2] or "."


class Mirror:
    """Keys -> services -> records per name.  Runs on the event loop thread only."""

    def __init__(self, store: RecordStore, prefix: str, zones: list[str], ttl: int) -> None:
        self._store = store
        self._prefix = prefix.rstrip("/")
        self._zones = zones
        self._ttl = ttl
        self.services: dict[str, Service] = {}
        self._subtree: dict[str, set[str]] = {}  # name -> keys at or below it
        self._children: dict[str, set[str]] = {}  # name -> names one label below it (wildcards)
        self._published: dict[str, list[Record]] = {}  # name -> the records it answers with
        self.bad_keys: dict[str, str] = {}  # key -> why it was skipped

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
            found.append(ancestor)
        if speaks_for_apex(name, zone):
            found.append(zone)
        return found

    def replace_all(self, entries: Iterable[tuple[str, bytes, int]]) -> int:
        old_names = set(self._subtree)
        self.services.clear()
        self._subtree.clear()
        self._children.clear()
        self.bad_keys.clear()
        for key, value, lease_ttl in entries:
            self._put(key, value, lease_ttl)
        self._publish(old_names | set(self._subtree), replace=True)
        return len(self.services)

    def apply(self, changes: Iterable[tuple[str, bytes | None, int]]) -> None:
        """(key, value or None for a delete, lease TTL) in revision order."""
        touched: set[str] = set()
        for key, value, lease_ttl in changes:
            touched.update(self._delete(key))
            if value is not None:
                touched.update(self._put(key, value, lease_ttl))
        self._publish(touched)

    def _put(self, key: str, value: bytes, lease_ttl: int) -> list[str]:
        key = key.rstrip("/")
        name = key_to_name(key, self._prefix)
        try:
            problem = name_problem(name)
            if problem is not None:
                raise ValueError(f"the key's name is not servable: {problem}")
            if "*" in name.split("."):  # SkyDNS wildcards are in questions, never in keys
                raise ValueError("a key's name cannot hold a '*' label")
            service = parse_value(key, name, value, lease_ttl)
        except ValueError as exc:
            if self.bad_keys.get(key) != str(exc):
                logger.warning(
                    "etcd key %s skipped: %s", key, exc, extra=event("etcd_bad_key", SOURCE)
                )
            self.bad_keys[key] = str(exc)
            return []
        self.bad_keys.pop(key, None)
        self.services[key] = service
        owners = self._owner_names(name)
        for owner in owners:
            if owner not in self._subtree:
                self._subtree[owner] = set()
                if owner not in self._zones:  # wildcards match names below an apex only
                    self._children.setdefault(_parent(owner), set()).add(owner)
            self._subtree[owner].add(key)
        return owners

    def _delete(self, key: str) -> list[str]:
        key = key.rstrip("/")
        self.bad_keys.pop(key, None)
        service = self.services.pop(key, None)
        if service is None:
            return []
        owners = self._owner_names(service.name)
        for owner in owners:
            keys = self._subtree.get(owner)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._subtree[owner]
                    if owner in self._zones:
                        continue
                    siblings = self._children[_parent(owner)]
                    siblings.discard(owner)
                    if not siblings:
                        del self._children[_parent(owner)]
        return owners

    def _records(self, name: str) -> list[Record]:
        services = [self.services[k] for k in self._subtree.get(name, ())]
        if name in self._zones:
            return apex_records(name, services, self._ttl)
        records = records_for(name, services, self._ttl)
        for service in services:
            if service.name == name:
                ptr = ptr_record(service, self._ttl)
                if ptr is not None:
                    records.append(ptr)
        return records

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
        # A name the store refused (held by the static zone) brings none of its keys.
        services = [
            self.services[key]
            for node in sorted(nodes)
            if any(self._store.holds(r) for r in self._published.get(node, ()))
            for key in self._subtree[node]
        ]
        return [
            record
            for record in records_for(pattern, services, self._ttl)
            if record.rtype == rtype and value_problem(record) is None
        ]

    def _publish(self, names: set[str], replace: bool = False) -> None:
        owners = {name: self._records(name) for name in names}
        for name, records in owners.items():
            if records:
                self._published[name] = records
            else:
                self._published.pop(name, None)
        if replace:
            self._store.replace_source(SOURCE, {n: r for n, r in owners.items() if r})
        else:
            self._store.update_owners(SOURCE, owners)


class EtcdSource:
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
        self._lease_ttls: dict[int, int] = {}
        self.state = "down"
        self.reason = "not connected yet"
        self.revision = 0
        self.reconnects = 0
        self.via = ""

    async def run(self) -> None:
        self._hand.bind(asyncio.get_running_loop())
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
        return SourceHealth.of(
            self.state == "ok", self.reason, self.revision > 0, revision=self.revision
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
                self.reconnects += 1
                self._hand(self._set_state, "degraded", reason(exc))
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
        response = client.get_prefix_response(self._settings.prefix)
        entries = [
            (kv.key.decode(errors="replace"), kv.value, self._lease_ttl(client, kv.lease))
            for kv in response.kvs
        ]
        self.revision = response.header.revision
        self._hand(self._replace_all, entries)

    def _consume(self, client: Any, events: queue.Queue[Any]) -> None:
        while not self._stopping.is_set():
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
            changes: list[tuple[str, bytes | None, int]] = []
            for response in batch:
                if isinstance(response, Exception):
                    if changes:
                        self._hand(self._apply, changes)
                    raise response
                for change in response.events:
                    key = change.key.decode(errors="replace")
                    if type(change).__name__ == "DeleteEvent":
                        changes.append((key, None, 0))
                    else:
                        lease = getattr(change, "lease", 0) or 0
                        changes.append((key, change.value, self._lease_ttl(client, lease)))
                self.revision = max(self.revision, response.header.revision)
            if changes:
                self._hand(self._apply, changes)

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
    def _replace_all(self, entries: list[tuple[str, bytes, int]]) -> None:
        count = self.mirror.replace_all(entries)
        self._stats.etcd_bad_keys = len(self.mirror.bad_keys)
        logger.info(
            "etcd listed: %d keys (%d skipped), revision %d",
            count,
            len(self.mirror.bad_keys),
            self.revision,
            extra=event("etcd_listed", SOURCE),
        )

    def _apply(self, changes: list[tuple[str, bytes | None, int]]) -> None:
        self.mirror.apply(changes)
        self._stats.etcd_bad_keys = len(self.mirror.bad_keys)
        self._stats.etcd_updates += len(changes)

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
