"""The etcd source: keeps an in-memory mirror (``etcd_mirror``) of every SkyDNS-format key
under the prefix.

A thread lists the prefix in pages at one revision, then watches it from the next revision;
what it reads is handed to the event loop, which applies it in slices of a few milliseconds.
After any disconnect it re-watches from the last revision seen (nothing missed); when that
revision has been compacted (checked before re-watching, and reported by the watch) it lists
again.  While etcd is unreachable the mirror keeps its last content (state ``degraded``) and
answers go on.  etcd is never read on the query path.

Who owns what: the watch thread writes ``revision`` (the newest revision it has read, not
necessarily applied yet), ``reconnects``, ``_lease_ttls``, ``_lease_left`` and ``_present``
(replaced whole, never changed in place); the event loop writes everything else (the mirror
and the store, ``_backlog``, ``state``/``reason``/``listed``/``via``, ``_node_leases``, a
frozenset replaced whole).  Each is written by one thread only, and read elsewhere as one
attribute load (an int, or a reference to a value its writer no longer changes).  Work
crosses from the thread to the loop only through ``_hand`` (``call_soon_threadsafe``), in
order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from dnsd.heap import Settler
from dnsd.logs import event
from dnsd.records import RecordStore
from dnsd.sources.errors import explain
from dnsd.sources.etcd_mirror import SOURCE, Change, Mirror
from dnsd.sources.lifecycle import (
    DEGRADED,
    DOWN,
    JOIN_TIMEOUT_S,
    OK,
    Backoff,
    LoopHand,
    SourceHealth,
    Threads,
)
from dnsd.sources.skydns import key_to_name, presence_prefix
from dnsd.stats import Stats

logger = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
BATCH_WAIT_S = 0.005  # gather a burst of watch events into one hand-over to the loop
SLICE_S = 0.003  # the longest the event loop applies changes before serving again
SLICE_KEYS = 64  # changes per store update within a slice
LEASE_POLL_S = 5.0  # how often the publishing nodes' lease time left is read
PRESENCE_POLL_S = 1.0  # how often the publishing nodes' presence keys are read
PAGE_KEYS = 1000  # keys per page of a list (fewer while a page is over gRPC's limit)


class EtcdSource:
    """Follows the prefix on a thread; the event loop applies what it read in slices of at
    most ``SLICE_S`` of CPU, so a bulk change never holds the loop for long: queries (and the
    UDP listener threads' misses) are answered between slices."""

    name = SOURCE
    stop_timeout_s = JOIN_TIMEOUT_S

    def __init__(
        self,
        store: RecordStore,
        client_factory: Callable[[], Any],
        prefix: str,
        zones: list[str],
        ttl: int,
        stats: Stats,
    ) -> None:
        """``client_factory``: a new etcd client (``etcd_client.make_client``)."""
        self.mirror = Mirror(store, prefix, zones, ttl)
        store.serve_patterns(self.mirror.wildcard)  # SkyDNS wildcards cover etcd names only
        self._prefix = prefix
        self._stats = stats
        self._client_factory = client_factory
        self._threads = Threads()
        self._stopping = self._threads.stopping
        self._hand = LoopHand()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lease_ttls: dict[int, int] = {}
        self._node_leases: frozenset[int] = frozenset()  # for the watch thread to poll
        self._lease_left: dict[int, tuple[int, float]] = {}  # lease -> (TTL left, when read)
        self._present: dict[str, int] = {}  # node -> lease of its presence key (polled)
        self._clock = time.monotonic
        self._backlog: deque[Change | Callable[[], None]] = deque()
        self._draining = False
        self._heap = Settler()  # after bulk changes: no full GC pause over the whole store
        self.state = DOWN
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
        listing = self.state == OK and not self.listed
        return SourceHealth.of(
            self.state == OK and self.listed,
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
                    self._prefix, events.put, start_revision=self.revision + 1
                )
                endpoint = getattr(client, "endpoint_in_use", None)
                self._hand(self._set_state, OK, f"via {getattr(endpoint, 'netloc', '?')}")
                backoff.reset()
                try:
                    self._consume(client, events)
                finally:
                    with contextlib.suppress(Exception):
                        client.cancel_watch(watch_id)
            except Exception as exc:
                from pyetcd.exceptions import RevisionCompactedError  # with etcd on only

                if isinstance(exc, RevisionCompactedError):
                    logger.info("etcd revision %d compacted: listing again", self.revision)
                    listed = False
                    continue
                if _too_big(exc):  # a watch reply over the message limit: pages never are
                    logger.warning("etcd watch reply too big: listing again, in pages")
                    listed = False
                self.reconnects += 1
                self._hand(self._set_state, DEGRADED, describe(exc, client))
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
            client.get_prefix_response(self._prefix, revision=self.revision, count_only=True)
        except Exception as exc:
            if "compacted" in str(exc):
                return False
            raise
        return True

    def _list(self, client: Any) -> None:
        """Reads the prefix in pages, all at the first page's revision, so no reply nears
        gRPC's message limit whatever the prefix holds (a page that still does, with a few
        values of megabytes, is asked again smaller)."""
        prefix = self._prefix.encode()
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
        from pyetcd.events import DeleteEvent  # imported with etcd on only

        polled = present_polled = 0.0
        while not self._stopping.is_set():
            if self._clock() - present_polled >= PRESENCE_POLL_S:
                present_polled = self._clock()
                self._poll_presence(client)
            leases = self._node_leases | set(self._present.values())
            unread = leases - self._lease_left.keys()  # new nodes: read them at once
            if self._clock() - polled >= LEASE_POLL_S or unread:
                polled = self._clock()
                self._poll_leases(client, leases)
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
                    if isinstance(change, DeleteEvent):
                        changes.append((key, None, 0))
                    else:
                        lease = getattr(change, "lease", 0) or 0
                        ttl = self._lease_ttl(client, lease)
                        changes.append((key, change.value, ttl, lease))
                self.revision = max(self.revision, response.header.revision)
            if changes:
                self._hand(self._enqueue, changes)

    def _poll_presence(self, client: Any) -> None:
        """The publishing nodes' presence keys (nodes with nothing published are listed)."""
        present: dict[str, int] = {}
        with contextlib.suppress(Exception):
            base = presence_prefix(self._prefix)
            for _, meta in client.get_prefix(base, keys_only=True):
                node = meta.key.decode(errors="replace")[len(base) :]
                if node and meta.lease_id:
                    present[node] = meta.lease_id
            self._present = present

    def _poll_leases(self, client: Any, leases: set[int] | frozenset[int]) -> None:
        """How long each publishing node's lease has left (for the nodes view).  A lease that
        cannot be read is remembered as gone (-1), so it is not read again before the next
        poll."""
        left: dict[int, tuple[int, float]] = {}
        for lease in leases:
            try:
                left[lease] = (int(client.get_lease_info(lease).TTL), self._clock())
            except Exception:
                left[lease] = (-1, self._clock())
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
        held_by = [(node, held.keys, held.lease) for (node, _), held in self.mirror.nodes.items()]
        listed = {node for node, _, _ in held_by}
        held_by += [(node, 0, lease) for node, lease in self._present.items() if node not in listed]
        for node, keys, lease in sorted(held_by):
            known = self._lease_left.get(lease)
            left = None
            if known is not None and known[0] >= 0:
                left = round(max(known[0] - (now - known[1]), 0.0), 1)
            rows.append({"node": node, "keys": keys,
                         "lease": f"{lease:x}" if lease else None,
                         "lease_left_s": left})  # fmt: skip
        return rows

    def unserved(self) -> Iterator[tuple[str, str, str]]:
        """(name, key, reason) for every key skipped as unservable."""
        for key, why in list(self.mirror.bad_keys.items()):
            yield key_to_name(key, self._prefix), key, why

    def _set_state(self, state: str, detail: str) -> None:
        """``detail``: for "ok" the member in use, otherwise why not."""
        if state == OK:
            if state != self.state or detail != self.via:
                logger.info(
                    "etcd watching %s from revision %d %s",
                    self._prefix,
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
