"""The record store: the one in-memory name table every source writes and the resolver reads.

Sources (static, docker, etcd) own their records, grouped by *owner* (a hosts file, a container,
an etcd key).  Replacing one owner's or one source's records never touches anyone else's.
Lookups are O(1) by (lower-cased name, type); a reverse index gives automatic PTR names for every
A/AAAA held.  Identical records from several owners are merged, not duplicated.

Every record a source offers passes ``Admission`` (DNS limits, zone confinement) and the
precedence rule: a name the operator's static zone holds cannot be joined by any other source.
Refused records are kept aside with the reason (for /records), counted, and logged once; when
the static zone lets go of a name, other sources' records for it are admitted again.

All mutation happens on the event-loop thread, in one synchronous call (a query never sees half
an update) or, for a change too big for one (``replace_source_steps``: a reload of a huge hosts
file), in steps the loop serves between; a query in between sees part of it.  Each change bumps
``generation`` and tells listeners (the packed-answer cache) which names it touched, ancestors
included (a new ``a.b.docker.`` changes what ``b.docker.`` answers: NXDOMAIN becomes NODATA),
and the reverse names of addresses that came or went.
The store knows nothing about DNS wire format or sockets.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from dnsd.bag import Bag, bag_add, bag_items, bag_remove, count_down, count_up
from dnsd.change_log import ChangeLog
from dnsd.names import address_key, reverse_address, reverse_name
from dnsd.record import Record
from dnsd.record_steps import (
    STEP,
    Key,
    Records,
    equal_steps,
    keep,
    set_steps,
    unique,
    unique_steps,
)
from dnsd.refusals import RefusalLog
from dnsd.slices import Steps, drive

logger = logging.getLogger(__name__)

STATIC = "static"  # the operator's source: its names cannot be joined by any other source
OWNED_BY_STATIC = "name held by the static zone"


@dataclass(frozen=True, slots=True)
class Owned:
    """A record together with who published it (for /records and debugging)."""

    record: Record
    source: str
    owner: str


class Rejected(NamedTuple):
    """A record a source offered that the store refused, and why."""

    record: Record
    source: str
    owner: str
    reason: str


class AdmissionRules(Protocol):
    """What the store asks of each offered record (``dnsd.admission.Admission``)."""

    def problem(self, source: str, record: Record) -> str | None: ...

    def reverses(self, record: Record) -> bool: ...

    def zone_of(self, name: str) -> str | None: ...


Derive = Callable[[Record], tuple[Record, ...]]


class RecordStore:
    def __init__(
        self, admission: AdmissionRules | None = None, derive: Derive | None = None
    ) -> None:
        """``derive``: records a served record brings with it (DNS-SD browsing,
        ``dns_sd.derived``), indexed and dropped with it; kept inside the zones."""
        self._admission = admission
        self._derive = derive
        # Each owner's records as a tuple without repeats (a third the size of a frozenset;
        # sets are built only to compare an owner's old and new records).
        self._offered: dict[Key, Records] = {}  # as the sources gave them
        self._rejected: dict[Key, dict[Record, str]] = {}
        self._static_names: dict[str, int] = {}
        self._static_dirty: set[str] = set()  # static names that came or went in this change
        self._refusals = RefusalLog(OWNED_BY_STATIC)
        self.rejections = self._refusals.counts  # (source, reason kind) -> records refused
        self._owned: dict[Key, Records] = {}  # as admitted
        # type -> name -> its records, each with the number of owners holding it (a table per
        # type: no (name, type) tuple per name)
        self._index: dict[str, Bag[Record]] = {}
        self._names: dict[str, int] = {}
        # address (``address_key``) -> the names of its automatic PTR: keyed by the address
        # text the record already holds, not by a reverse name of its own
        self._reverse: Bag[str] = {}
        self._listeners: list[Callable[[set[str]], None]] = []
        self._touched: set[str] = set()  # names whose records changed in this change
        self._patterns: list[Callable[[str, str], list[Record]]] = []
        self.generation = 0
        self.changes = ChangeLog()  # which names each recent generation touched

    # --- reading -------------------------------------------------------------------------
    def lookup(self, name: str, rtype: str) -> list[Record]:
        table = self._index.get(rtype)
        return bag_items(table.get(name)) if table is not None else []

    def holds(self, record: Record) -> bool:
        """Whether ``record`` is served (offered and admitted)."""
        table = self._index.get(record.rtype)
        found = table.get(record.name) if table is not None else None
        if isinstance(found, dict):
            return record in found
        return found == record

    def exists(self, name: str) -> bool:
        """True when the name holds records or is an ancestor of a name that does."""
        if name in self._names:
            return True
        address = reverse_address(name) if name.endswith(".arpa.") else None
        return address is not None and address in self._reverse

    def held_by_static(self, name: str) -> bool:
        """Whether the operator's static zone holds ``name`` (no other source may join it)."""
        return name in self._static_names

    def reverse(self, ptr_name: str) -> list[str]:
        """Target names for an automatic PTR (``4.3.2.1.in-addr.arpa.``)."""
        address = reverse_address(ptr_name)
        return bag_items(self._reverse.get(address)) if address is not None else []

    def owned(self) -> Iterator[Owned]:
        """Every served record with its owner, from a snapshot taken at the first step (each
        owner's records are an immutable tuple): the store may change between steps."""
        for (source, owner), records in list(self._owned.items()):
            for record in records:
                yield Owned(record, source, owner)

    def count(self, source: str | None = None) -> int:
        counts = self.counts()
        return sum(counts.values()) if source is None else counts.get(source, 0)

    def counts(self) -> dict[str, int]:
        """Records held per source."""
        found: dict[str, int] = {}
        for (source, _), records in self._owned.items():
            found[source] = found.get(source, 0) + len(records)
        return found

    def rejected(self) -> Iterator[Rejected]:
        """Records offered but not served, with the reason (for /records); a snapshot, as
        ``owned``."""
        for (source, owner), records in list(self._rejected.items()):
            for record, why in list(records.items()):
                yield Rejected(record, source, owner, why)

    def matching(self, pattern: str, rtype: str) -> list[Record]:
        """Records of type ``rtype`` whose names match a SkyDNS wildcard pattern
        (``*.web.docker.``, ``prod.any.docker.``: ``*``/``any`` is any one label), from the
        sources that answer such patterns (``serve_patterns``; only etcd names do)."""
        for patterns in self._patterns:
            found = patterns(pattern, rtype)
            if found:
                return found
        return []

    def serve_patterns(self, patterns: Callable[[str, str], list[Record]]) -> None:
        """A source's own wildcard-pattern walk over the names it holds (``matching``)."""
        self._patterns.append(patterns)

    def changed_since(self, generation: int, names: Iterable[str]) -> bool:
        """Did a change after ``generation`` touch one of ``names``?  (``ChangeLog``: an
        answer built from the store before an ``await`` is checked with it after.)"""
        return self.changes.changed_since(generation, names)

    def subscribe(self, listener: Callable[[set[str]], None]) -> None:
        """``listener(names)`` after every change, with every name whose answers may differ."""
        self._listeners.append(listener)

    # --- writing -------------------------------------------------------------------------
    def replace_owner(self, source: str, owner: str, records: Iterable[Record]) -> bool:
        """Set one owner's records; returns True when anything changed."""
        changed = self._set((source, owner), records)
        if changed:
            self._changed()
        return changed

    def remove_owner(self, source: str, owner: str) -> bool:
        return self.replace_owner(source, owner, ())

    def update_owners(self, source: str, owners: Mapping[str, Iterable[Record]]) -> bool:
        """Set several owners of one source at once (an empty list removes one); one change."""
        changed = False
        for owner, records in owners.items():
            changed |= self._set((source, owner), records)
        if changed:
            self._changed()
        return changed

    def replace_source(self, source: str, owners: Mapping[str, Iterable[Record]]) -> bool:
        """Set every owner of one source at once; owners not named are removed."""
        return drive(self.replace_source_steps(source, owners))

    def replace_source_steps(
        self, source: str, owners: Mapping[str, Iterable[Record]]
    ) -> Steps[bool]:
        """``replace_source`` in steps of at most ``STEP`` records of work, for a caller that
        serves between them (``dnsd.slices.run_in_slices``, calling ``publish_partial`` before
        each pause): a 200,000-name hosts file costs seconds, this way never more than a few
        milliseconds at a time."""
        stale = [key for key in self._offered if key[0] == source and key[1] not in owners]
        changed = False
        for key in stale:
            changed |= yield from self._set_steps(key, ())
        for owner, records in owners.items():
            changed |= yield from self._set_steps((source, owner), records)
        if changed:
            self._changed()
        return changed

    def publish_partial(self) -> None:
        """Between the steps of a change: tell the listeners what changed so far, so a query
        in between sees part of the change but never a stale cached answer.  The static zone's
        precedence over other sources is settled when the change ends."""
        if self._touched:
            self._changed(readmit=False)

    def _set(self, key: Key, records: Iterable[Record]) -> bool:
        """One owner's records, in one go (most owners hold a few records)."""
        offered = unique(records if isinstance(records, (list, tuple)) else list(records))
        if self._offered.get(key, ()) == offered:
            return False
        keep(self._offered, key, offered)
        return self._admit(key, offered, trust_current=True)

    def _set_steps(self, key: Key, records: Iterable[Record]) -> Steps[bool]:
        """``_set`` in steps when the owner is big."""
        items = records if isinstance(records, (list, tuple)) else list(records)
        if len(items) <= STEP and len(self._offered.get(key, ())) <= STEP:
            changed = self._set(key, items)
            yield
            return changed
        offered = yield from unique_steps(items)
        if (yield from equal_steps(self._offered.get(key, ()), offered)):
            return False
        keep(self._offered, key, offered)
        held = self._owned.get(key, ())
        current = (yield from set_steps(held)) if held else None
        admitted: list[Record] = []
        rejected: dict[Record, str] = {}
        reformed = False
        for start in range(0, len(offered), STEP):
            reformed |= self._judge(key, offered[start : start + STEP], current, admitted, rejected)
            yield
        keep(self._rejected, key, rejected)
        if rejected or reformed:
            offered = yield from unique_steps(admitted)
        return (yield from self._index_owner_steps(key, offered, current))

    def _admit(self, key: Key, offered: Records, trust_current: bool) -> bool:
        """Index what of ``offered`` may be served; set the rest aside with the reason."""
        held = self._owned.get(key, ()) if trust_current else ()
        current = set(held) if held else None  # a new owner (most of a bulk change): no set
        admitted: list[Record] = []
        rejected: dict[Record, str] = {}
        reformed = self._judge(key, offered, current, admitted, rejected)
        keep(self._rejected, key, rejected)
        # The common case (everything admitted as offered) shares the offered tuple: no copy.
        same = not rejected and not reformed
        return self._index_owner(key, offered if same else unique(admitted), current)

    def _judge(
        self,
        key: Key,
        offered: Records,
        current: set[Record] | None,
        admitted: list[Record],
        rejected: dict[Record, str],
    ) -> bool:
        """Sort ``offered`` into ``admitted`` (as served) and ``rejected`` (with the reason);
        True when a record is served in another form than offered."""
        reformed = False
        for record in offered:
            if current is not None and record in current:
                admitted.append(record)
                continue
            why = self._problem(key[0], record)
            if why is None:
                served = self._served_form(record)
                reformed |= served is not record
                admitted.append(served)
            else:
                rejected[record] = why
                self._reject(key, record, why)
        return reformed

    def _problem(self, source: str, record: Record) -> str | None:
        if source != STATIC and record.name in self._static_names:
            return OWNED_BY_STATIC
        return None if self._admission is None else self._admission.problem(source, record)

    def _served_form(self, record: Record) -> Record:
        if record.reverse and self._admission is not None and not self._admission.reverses(record):
            return dataclasses.replace(record, reverse=False)
        return record

    def _reject(self, key: Key, record: Record, why: str) -> None:
        self._refusals.refused(key[0], key[1], record, why)

    def _index_owner(self, key: Key, records: Records, old: set[Record] | None = None) -> bool:
        """``old``: the owner's records as a set, when the caller has it."""
        held = self._owned.get(key, ())
        if held == records:
            return False
        keep(self._owned, key, records)
        if not held or not records:  # an owner that comes or goes: no sets to compare
            self._reindex(key, held, records)
            return True
        if old is None:
            old = set(held)
        new = set(records)
        if old == new:  # the same records in another order
            return False
        self._reindex(key, tuple(old - new), tuple(new - old))
        return True

    def _index_owner_steps(
        self, key: Key, records: Records, old: set[Record] | None = None
    ) -> Steps[bool]:
        """``_index_owner`` in steps, for a big owner."""
        held = self._owned.get(key, ())
        if (yield from equal_steps(held, records)):
            return False
        keep(self._owned, key, records)
        removed, added = held, records
        if held and records:
            new = yield from set_steps(records)
            if old is None:
                old = yield from set_steps(held)
            removed_list: list[Record] = []
            added_list: list[Record] = []
            for start in range(0, len(held), STEP):
                removed_list += [r for r in held[start : start + STEP] if r not in new]
                yield
            for start in range(0, len(records), STEP):
                added_list += [r for r in records[start : start + STEP] if r not in old]
                yield
            if not removed_list and not added_list:  # the same records in another order
                return False
            removed, added = tuple(removed_list), tuple(added_list)
        for start in range(0, len(removed), STEP):
            self._reindex(key, removed[start : start + STEP], ())
            yield
        for start in range(0, len(added), STEP):
            self._reindex(key, (), added[start : start + STEP])
            yield
        return True

    def _reindex(self, key: Key, removed: Records, added: Records) -> None:
        if key[0] == STATIC:
            self._track_static(set(removed), set(added))
        for record in removed:
            self._unindex(record)
        for record in added:
            self._indexed(record)

    def _track_static(self, old: set[Record], new: set[Record]) -> None:
        for record in new - old:
            if record.name not in self._static_names:
                self._static_dirty.add(record.name)
            count_up(self._static_names, record.name)
        for record in old - new:
            count_down(self._static_names, record.name)
            if record.name not in self._static_names:
                self._static_dirty.add(record.name)

    def _readmit(self) -> None:
        """The static zone took or freed names: other sources' owners there are judged again."""
        dirty, self._static_dirty = self._static_dirty, set()
        for key, offered in list(self._offered.items()):
            if key[0] != STATIC and any(record.name in dirty for record in offered):
                self._admit(key, offered, trust_current=False)

    def _add_name(self, name: str) -> None:
        """Count one more record at ``name``; a name that comes into existence counts once at
        its parent, so a name's count is its records plus its child names (``exists``) and a
        record costs one dict update, not one per ancestor."""
        while True:
            count = self._names.get(name, 0)
            self._names[name] = count + 1
            if count or name == ".":
                return
            name = name.partition(".")[2] or "."

    def _drop_name(self, name: str) -> None:
        while True:
            count = self._names[name] - 1
            if count:
                self._names[name] = count
                return
            del self._names[name]
            if name == ".":
                return
            name = name.partition(".")[2] or "."

    def _table(self, rtype: str) -> Bag[Record]:
        table = self._index.get(rtype)
        if table is None:
            table = self._index[rtype] = {}
        return table

    def _indexed(self, record: Record) -> None:
        self._touched.add(record.name)
        bag_add(self._table(record.rtype), record.name, record)
        self._add_name(record.name)
        if record.reverse and record.rtype in ("A", "AAAA"):
            address = str(record.value)
            self._touched.add(reverse_name(address))
            bag_add(self._reverse, address_key(address), record.name)
        if self._derive is not None and record.name[0] == "_":
            for extra in self._derived(record):
                self._touched.add(extra.name)
                bag_add(self._table(extra.rtype), extra.name, extra)
                self._add_name(extra.name)

    def _unindex(self, record: Record) -> None:
        self._touched.add(record.name)
        bag_remove(self._index[record.rtype], record.name, record)
        self._drop_name(record.name)
        if record.reverse and record.rtype in ("A", "AAAA"):
            address = str(record.value)
            self._touched.add(reverse_name(address))
            bag_remove(self._reverse, address_key(address), record.name)
        if self._derive is not None and record.name[0] == "_":
            for extra in self._derived(record):
                self._touched.add(extra.name)
                bag_remove(self._index[extra.rtype], extra.name, extra)
                self._drop_name(extra.name)

    def _derived(self, record: Record) -> list[Record]:
        assert self._derive is not None
        admission = self._admission
        return [
            extra
            for extra in self._derive(record)
            if admission is None or admission.zone_of(extra.name) is not None
        ]

    def _changed(self, readmit: bool = True) -> None:
        if readmit and self._static_dirty:
            self._readmit()
        self.generation += 1
        touched, self._touched = self._touched, set()
        names: set[str] = set()
        for name in touched:  # with its ancestors, each walk stopping at a name already in
            while name not in names:
                names.add(name)
                if name == ".":
                    break
                name = name.partition(".")[2] or "."
        self.changes.add(self.generation, names)
        for listener in self._listeners:
            listener(names)
