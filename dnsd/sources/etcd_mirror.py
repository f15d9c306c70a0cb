"""The etcd mirror: SkyDNS-format keys -> services -> records in the record store, per key.

Pure bookkeeping on the event loop, no I/O: the etcd source (``sources/etcd.py``) reads the
keys and hands them here in slices.  A key's records are computed from its value alone
(``skydns``), so a change costs what the key gives, whatever the size of the subtree around
it; dnsd's own keys (``dnsd_node``) are served as their host serves the container.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sys
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from dnsd.admission import name_problem, value_problem
from dnsd.logs import Throttled, event
from dnsd.names import ancestors, in_zone
from dnsd.protocol import MAX_ANSWER_RECORDS
from dnsd.record import WILDCARD_LABELS, Record, wildcard_parts
from dnsd.records import RecordStore
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
)

logger = logging.getLogger(__name__)

SOURCE = "etcd"

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
        # (publishing node (dnsd_node), lease) -> its keys: a node's dnsd and each of its
        # ``dnsd register`` runs hold a lease of their own
        self.nodes: dict[tuple[str, int], NodeKeys] = {}
        self.bad_keys: dict[str, str] = {}  # key -> why it was skipped
        self._logged_reasons: dict[str, int] = {}

    def _owner_names(self, name: str) -> list[str]:
        """The name and its ancestors down to (not including) its zone's apex; the apex too
        for keys under ``ns.dns.<zone>`` and ``apex.dns.<zone>``."""
        zone = next((z for z in self._zones if in_zone(name, z)), None)
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
        if (
            old is not None
            and service is not None
            and not old.node
            and not service.node
            and old.group == service.group
        ):  # a new value at the same key (its name comes from the key): the tree stays
            self.services[key] = service
            touched.update(self._owners[key])
            return self._key_records(service)
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
        held = (service.node, service.lease)
        entry = self.nodes.get(held)
        if entry is None:
            entry = self.nodes[held] = NodeKeys(lease=service.lease)
        entry.keys += step
        if not entry.keys:
            del self.nodes[held]

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
        owners = self._owners[service.key]
        names = [o for o in owners if o not in self._zones and o not in self._grouped]
        records = service_records(names, service, self._ttl)
        for zone in (o for o in owners if o in self._zones):
            records += apex_service_records(zone, service, self._ttl)
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
        services = list(
            itertools.islice(
                (
                    self.services[key]
                    for node in sorted(nodes)
                    if not self._store.held_by_static(node)
                    for key in self._keys_at(node)
                ),
                MAX_ANSWER_RECORDS,  # each key is a record at least: the answer's cap
            )
        )
        return [
            record
            for record in records_for(pattern, services, self._ttl)
            if record.rtype == rtype and value_problem(record) is None
        ]
