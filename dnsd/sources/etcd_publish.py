"""The publisher: writes this node's containers to etcd in the SkyDNS format, under one lease.

Keys are ``<prefix>/<name reversed>/<node>-<container id prefix>[-<n>]`` (DNS-safe instance
labels), for every name a container answers to except host-local ones (``<name>.<network>``),
wildcards (``*.<name>``) included, and for its SRV names with the port and the container's own
name as the target.  Every value carries ``dnsd_node``: the mirror then serves the key exactly
as this host serves the container (``skydns.published_records``), so every host answers
alike.  Every key hangs on this node's lease, kept alive every TTL/3: a crashed host's keys
vanish everywhere within the lease TTL.  On start, keys an earlier run of the same node left
are deleted.  While etcd is unreachable the publisher keeps trying; on return it re-grants the
lease if it expired and publishes everything again.  Advertise mode ``container`` publishes
container addresses (routed/overlay networks); ``host`` publishes ``advertise_ip`` with the
host ports of published (-p) ports.

Threads: the event loop hands the desired keys over in ``update`` (``_wanted``, swapped under
``_lock``, then ``_wake``; ``_keys_of`` is the loop's); everything else is the publisher
thread's: ``_published``, the lease, ``_lease_until``, ``state``/``reason``/``synced``/
``revoked`` and its ``Stats`` counters (one writer each).  The loop reads those as single
attribute loads (/ready, /metrics): a reader may see a new ``state`` with the previous
``reason`` for an instant.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from dnsd.logs import event
from dnsd.record import Record, SrvValue
from dnsd.sources.docker_labels import dns_label
from dnsd.sources.errors import reason
from dnsd.sources.lifecycle import DEGRADED, DOWN, OK, SourceHealth, Threads
from dnsd.sources.skydns import NODE_FIELD, TXT_FIELD, name_to_key, presence_prefix
from dnsd.stats import Stats

logger = logging.getLogger(__name__)

TXN_OPS = 100  # etcd allows 128 operations per transaction by default
RETRY_S = 1.0
WITHDRAW_TIMEOUT_S = 1.0  # for the lease revocation on a clean stop
# A lease found gone this long before it could have expired was revoked by someone (etcd's
# expiry and ours differ by a round trip).
REVOKED_MARGIN_S = 1.0


class LocalService(Protocol):
    """What the publisher needs of one local container (the Docker source's ``Built`` is
    one): the records it is served with, the host-local names among them, its published
    ports, and why it is withheld, if it is."""

    withheld: str | None
    served: list[Record]
    local_names: set[str]
    published: dict[tuple[int, str], int]  # (container port, proto) -> host port


@dataclass(frozen=True)
class PublishSettings:
    node_id: str
    lease_ttl: int = 10
    advertise: str = "container"  # or "host"
    advertise_ip: str = ""


def instance_label(node: str, container_id: str, index: int) -> str:
    label = f"{dns_label(node)}-{container_id[:12]}"
    return f"{label}-{index}" if index else label


CONTAINER_SUFFIX = r"-[0-9a-f]{12}(-[0-9]+)?"  # after the node: a container ID prefix, index


def container_label(node: str = "") -> re.Pattern[str]:
    """The instance labels of ``node``'s containers (a container ID is hex), not those of
    names registered with ``dnsd register`` on the same node; without a node, any node's."""
    return re.compile((re.escape(dns_label(node)) if node else ".+") + CONTAINER_SUFFIX)


def desired_keys(
    built: Mapping[str, LocalService], settings: PublishSettings, prefix: str
) -> dict[str, bytes]:
    """Every key this node should hold, with its JSON value."""
    keys: dict[str, bytes] = {}
    host_mode = settings.advertise == "host"
    node = settings.node_id
    for container_id, box in built.items():
        if box.withheld:
            continue
        addresses = sorted({str(r.value) for r in box.served if r.rtype in ("A", "AAAA")})
        if host_mode:
            addresses = [settings.advertise_ip] if addresses else []
        texts = {r.name: r.value for r in box.served if r.rtype == "TXT"}  # DNS-SD TXT
        for record in box.served:  # names lost to another container are not published
            if record.name in box.local_names:
                continue
            if record.rtype in ("A", "AAAA"):
                # targetstrip 1: the key stands for the name, not for its instance label
                # (SRV targets and automatic PTRs); only a container's own name gets a PTR.
                index = 0 if host_mode else addresses.index(str(record.value))
                host = settings.advertise_ip if host_mode else str(record.value)
                value = {"host": host, "ttl": record.ttl, "targetstrip": 1, NODE_FIELD: node}
                if not record.reverse:
                    value["reverse"] = False
            elif isinstance(record.value, SrvValue):
                # The SRV target is the container's own name, as the local answer has it, so
                # every host gives the same SRV answer (and SRV names get no PTRs).
                srv = record.value
                port = srv.port
                if host_mode:
                    proto = record.name.split(".")[1].lstrip("_")
                    port = box.published.get((srv.port, proto), 0)
                    if not port:
                        continue
                index = 0
                value = {"host": srv.target.rstrip("."), "port": port, "priority": srv.priority,
                         "weight": srv.weight, "ttl": record.ttl, NODE_FIELD: node}  # fmt: skip
                if record.name in texts:
                    value[TXT_FIELD] = list(texts[record.name])
            else:
                continue
            key = f"{name_to_key(record.name, prefix)}/"
            key += instance_label(settings.node_id, container_id, index)
            keys[key] = json.dumps(value).encode()
    return keys


class Publisher:
    name = "etcd-publish"
    stop_timeout_s = WITHDRAW_TIMEOUT_S  # its thread withdraws this node's keys on the way out

    def __init__(
        self,
        client_factory: Callable[[], Any],
        prefix: str,
        settings: PublishSettings,
        stats: Stats,
        *,
        remove_earlier_run: bool = True,
        end_when_revoked: bool = False,
        clock: Callable[[], float] = time.monotonic,
        announce: bool = True,
    ) -> None:
        """``remove_earlier_run``: first delete the keys of this node's containers that an
        earlier run left.  A lease that lapses (etcd out of reach for its TTL) is granted
        again and everything republished; one revoked by someone else too, unless
        ``end_when_revoked``: then the publisher ends (``revoked``), as a registration does
        when ``dnsd deregister`` revokes it.  ``announce``: also hold the node's presence key
        (``presence_prefix``), so ``/nodes`` lists it with nothing published (a
        registration does not: it is not a node)."""
        self._client_factory = client_factory
        self._presence: tuple[str, bytes] | None = None
        if announce:
            self._presence = (
                presence_prefix(prefix) + settings.node_id,
                json.dumps({"node": settings.node_id}).encode(),
            )
        self._prefix = prefix.rstrip("/")
        self._settings = settings
        self._stats = stats
        self._remove_earlier = remove_earlier_run
        self._end_when_revoked = end_when_revoked
        self._clock = clock
        self._lease_until = 0.0  # when the lease runs out unless renewed (our clock; 0: none yet)
        self.revoked = False
        self._wanted: dict[str, bytes] = {}
        self._keys_of: dict[str, tuple[LocalService, list[Record], dict[str, bytes]]] = {}
        self._published: dict[str, bytes] = {}
        self._wake = threading.Event()
        self._threads = Threads()
        self._stopping = self._threads.stopping
        self._lock = threading.Lock()
        self.state = DOWN
        self.reason = "not connected yet"
        self.synced = False  # published at least once

    def update(self, built: Mapping[str, LocalService]) -> None:
        """New desired state (event loop thread); the publisher thread writes the difference.
        A container's keys are worked out again only when its served records changed (a new
        list), so a burst of changes costs per change, not per container known."""
        wanted: dict[str, bytes] = {}
        keys_of: dict[str, tuple[LocalService, list[Record], dict[str, bytes]]] = {}
        for container_id, box in built.items():
            cached = self._keys_of.get(container_id)
            if cached is not None and cached[0] is box and cached[1] is box.served:
                keys = cached[2]
            else:
                keys = desired_keys({container_id: box}, self._settings, self._prefix)
            keys_of[container_id] = (box, box.served, keys)
            wanted.update(keys)
        self._keys_of = keys_of
        with self._lock:
            self._wanted = wanted
        self._wake.set()

    def start(self) -> None:
        self._threads.start(self._run, "etcd-publish")

    async def run(self) -> None:
        """The daemon's way to start it: the thread, then nothing to do on the loop."""
        self.start()

    def stop(self) -> None:
        """Stop; the thread then withdraws this node's keys (revokes the lease): ``join``."""
        self._threads.stop()
        self._wake.set()

    def join(self, timeout_s: float) -> None:
        self._threads.join(timeout_s)

    def health(self) -> SourceHealth:
        return SourceHealth.of(self.state == OK, self.reason, self.synced)

    def lease_left_s(self) -> float | None:
        """Seconds until the lease runs out unless renewed (negative: overdue); None before
        the first grant."""
        return self._lease_until - self._clock() if self._lease_until else None

    @property
    def lease_ttl_s(self) -> int:
        return self._settings.lease_ttl

    # --- publisher thread ---------------------------------------------------------------------
    def _run(self) -> None:
        client: Any = None
        lease: Any = None
        cleaned = not self._remove_earlier
        refresh_s = max(self._settings.lease_ttl / 3, 0.5)
        while not self._stopping.is_set():
            try:
                if client is None:
                    client = self._client_factory()
                    if lease is not None:
                        lease.etcd_client = client  # keep the lease across reconnects
                if not cleaned:
                    self._remove_earlier_run(client)
                    cleaned = True
                if lease is None or not self._alive(lease):
                    if lease is not None and self._lapsed_early(lease):
                        break
                    lease = client.lease(self._settings.lease_ttl)
                    self._lease_until = self._clock() + self._settings.lease_ttl
                    self._published = {}
                    self._stats.etcd_lease_grants += 1
                    logger.info(
                        "etcd lease %x granted (%d s) for node %s",
                        lease.id,
                        self._settings.lease_ttl,
                        self._settings.node_id,
                    )
                self._sync(client, lease)
                self.synced = True
                self._set_state(OK, "")
                self._wake.wait(refresh_s)
                self._wake.clear()
            except Exception as exc:
                self._set_state(DEGRADED, reason(exc))
                with contextlib.suppress(Exception):
                    client.close()
                client = None
                self._stopping.wait(RETRY_S)
        if lease is not None and not self.revoked:
            with contextlib.suppress(Exception):
                lease.revoke()  # a clean stop withdraws at once

    def _alive(self, lease: Any) -> bool:
        responses = lease.refresh()
        self._stats.etcd_lease_renewals += 1
        alive = bool(responses) and responses[0].TTL > 0
        if alive:
            self._lease_until = self._clock() + responses[0].TTL
        return alive

    def _lapsed_early(self, lease: Any) -> bool:
        """The lease is gone: log why; True when it was revoked and the publisher ends."""
        revoked = self._clock() < self._lease_until - REVOKED_MARGIN_S
        how = "was revoked" if revoked else "expired"
        if revoked and self._end_when_revoked:
            logger.warning("etcd lease %x %s: withdrawn", lease.id, how)
            self.revoked = True
            self.state, self.reason = DOWN, f"lease {lease.id:x} revoked"
            return True
        self._stats.etcd_lease_losses += 1
        logger.warning("etcd lease %x %s; publishing again under a new lease", lease.id, how)
        return False

    def _remove_earlier_run(self, client: Any) -> None:
        mine = container_label(self._settings.node_id)
        stale = [
            meta.key
            for _, meta in client.get_prefix(self._prefix, keys_only=True)
            if mine.fullmatch(meta.key.decode(errors="replace").rsplit("/", 1)[-1])
        ]
        for start in range(0, len(stale), TXN_OPS):
            chunk = stale[start : start + TXN_OPS]
            client.transaction([], [client.transactions.delete(k) for k in chunk], [])
        if stale:
            logger.info(
                "etcd: removed %d keys an earlier run of node %s left",
                len(stale),
                self._settings.node_id,
            )

    def _sync(self, client: Any, lease: Any) -> None:
        with self._lock:
            wanted = dict(self._wanted)
        if self._presence is not None:
            wanted[self._presence[0]] = self._presence[1]
        puts = [(k, v) for k, v in wanted.items() if self._published.get(k) != v]
        deletes = [k for k in self._published if k not in wanted]
        ops = [client.transactions.put(k, v, lease=lease) for k, v in puts]
        ops += [client.transactions.delete(k) for k in deletes]
        for start in range(0, len(ops), TXN_OPS):
            client.transaction([], ops[start : start + TXN_OPS], [])
        for key, value in puts:
            self._published[key] = value
        for key in deletes:
            self._published.pop(key, None)
        if puts or deletes:
            self._stats.etcd_published = len(self._published) - (self._presence is not None)
            logger.debug("etcd: published %d keys, withdrew %d", len(puts), len(deletes))

    def _set_state(self, state: str, reason: str) -> None:
        if state != self.state:
            if state == OK:
                logger.info(
                    "etcd publishing as node %s",
                    self._settings.node_id,
                    extra=event("etcd_publishing", "etcd", node=self._settings.node_id),
                )
            else:
                logger.warning(
                    "etcd publishing %s: %s; retrying",
                    state,
                    reason,
                    extra=event("etcd_publish_lost", "etcd", node=self._settings.node_id),
                )
        self.state, self.reason = state, reason
