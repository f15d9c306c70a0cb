"""The local zone: authoritative answers from the record store.

Sits first in the resolver chain.  For a name inside an owned zone it always answers (records,
NODATA or NXDOMAIN with the SOA, never forwarded; SERVFAIL instead of a negative answer while
a source that could hold the name has not applied its first full load: ``loading``); outside
the zones it answers only what the store holds (automatic PTR, explicit records) and otherwise
returns None so the next stage (cache -> forward) takes over.  Knows nothing about sockets,
caches or forwarding.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from dnslib import AAAA, CNAME, MX, NS, PTR, QTYPE, RD, RR, SOA, SRV, TXT, A

from dnsd import dns_sd
from dnsd.names import ancestors, in_zone, label_of
from dnsd.protocol import (
    MAX_ANSWER_RECORDS,
    QTYPE_ANY,
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    RCODE_SERVFAIL,
)
from dnsd.record import WILDCARD_LABELS, MxValue, Record, SrvValue, srv_weights, wildcard_parts
from dnsd.records import RecordStore
from dnsd.resolve.answer import FOREVER, UNREAD, Answer
from dnsd.resolve.scopes import inside

logger = logging.getLogger(__name__)

MAX_CNAME_CHAIN = 8
MAX_BROWSED = 32  # DNS-SD instances whose SRV/TXT a browse answer carries as additional data
_ADDRESS_TYPES = ("A", "AAAA")
# RFC 8482: a minimal answer to ANY is one synthesized HINFO record.
_RFC8482_HINFO = RD(b"\x07RFC8482\x00")


def _rdata(record: Record) -> object:
    value = record.value
    match record.rtype:
        case "A":
            return A(value)
        case "AAAA":
            return AAAA(value)
        case "CNAME":
            return CNAME(value)
        case "PTR":
            return PTR(value)
        case "NS":
            return NS(value)
        case "TXT":
            assert isinstance(value, tuple)
            return TXT([str(part).encode() for part in value])
        case "SRV":
            assert isinstance(value, SrvValue)
            return SRV(value.priority, value.weight, value.port, value.target)
        case "MX":
            assert isinstance(value, MxValue)
            return MX(value.exchange, value.preference)
    raise ValueError(record.rtype)


def to_rr(record: Record, qname: str | None = None) -> RR:
    """A dnslib RR for ``record``; ``qname`` keeps the asker's spelling of the owner name."""
    rtype = getattr(QTYPE, record.rtype)
    return RR(label_of(qname or record.name), rtype, ttl=record.ttl, rdata=_rdata(record))


def _is_wildcard(name: str) -> bool:
    return any(label in WILDCARD_LABELS for label in name.split("."))


def nearest(records: list[Record], client_ip: str) -> list[Record]:
    """Network-aware answers: a client inside one of the records' networks gets only the
    addresses on that network; any other client gets them all."""
    near = [r for r in records if r.scope is not None and inside(client_ip, r.scope)]
    return near or records


_windows = itertools.count()  # where the next capped RRset's window starts


def _rrset(records: list[Record], qname: str | None = None) -> list[RR]:
    ttl = min(record.ttl for record in records)  # one TTL per RRset (RFC 2181 5.2)
    # The same data from several sources (local Docker and its etcd copy) is answered once.
    records = list({(r.rtype, r.value): r for r in records}.values())
    if records[0].rtype == "SRV":
        records = srv_weights(records)
    if len(records) > MAX_ANSWER_RECORDS:  # no transport carries them all: a window of them
        start = next(_windows) * MAX_ANSWER_RECORDS % len(records)
        records = (records[start:] + records[:start])[:MAX_ANSWER_RECORDS]
    rrs = [to_rr(record, qname) for record in records]
    for rr in rrs:
        rr.ttl = ttl
    return rrs


@dataclass(slots=True)
class _Asked:
    """One question's state while it is answered: who asks, and what the answer depends on."""

    client_ip: str
    depends: set[str]  # names whose change can change this answer
    per_client: bool = False
    scopes: set[str] = field(default_factory=set)  # the networks a per-client answer reads


class LocalZone:
    def __init__(
        self,
        store: RecordStore,
        zones: list[str],
        negative_ttl: int = 5,
        soa_ttl: int = 60,
        wall_clock: Callable[[], float] = time.time,
        loading: Callable[[str], bool] = lambda _zone: False,
    ) -> None:
        """``loading(zone)``: a source that could hold names in ``zone`` has not applied its
        first full load yet (a negative answer could be wrong: SERVFAIL, never cached)."""
        self._store = store
        self._loading = loading
        # Longest zone first, so ``a.b.docker.`` matches ``b.docker.`` before ``docker.``.
        self.zones = sorted(zones, key=len, reverse=True)
        self._negative_ttl = negative_ttl
        self._soa_ttl = soa_ttl
        self._serial_base = int(wall_clock())

    def zone_of(self, qname: str) -> str | None:
        for zone in self.zones:
            if in_zone(qname, zone):
                return zone
        return None

    def answer(self, qname: str, qtype: int, spelled: str, client_ip: str = "") -> Answer | None:
        """Answer ``qname`` (lower-case, absolute) or None when it is not ours to answer.

        ``spelled`` is the name as the client wrote it (its letter case is echoed);
        ``client_ip`` picks network-aware addresses.
        """
        ask = _Asked(client_ip, {qname})
        generation = self._store.generation
        found = self._answer(ask, qname, qtype, spelled)
        if found is None:
            return None
        return replace(
            found,
            # true until the store changes one of ``depends`` (a SERVFAIL: not at all)
            expires_in=FOREVER if found.rcode != RCODE_SERVFAIL else 0.0,
            per_client=ask.per_client,
            scopes=tuple(sorted(ask.scopes)),
            depends=tuple(ask.depends),
            generation=generation,
        )

    @property
    def generation(self) -> int:
        """The record store's generation (answers carry the one they were read at)."""
        return self._store.generation

    def changed_since(self, answer: Answer) -> bool:
        """Has the store changed, since ``answer`` was read from it, a name it depends on?
        (An answer that never read the store is current.)"""
        if answer.generation == UNREAD:
            return False
        return self._store.changed_since(answer.generation, answer.depends)

    def _holder(self, ask: _Asked, name: str) -> str:
        """The name whose records answer for ``name``: itself, or when it does not exist the
        wildcard ``*.<closest encloser>`` if that holds records (RFC 4592).  The answer then
        depends on the wildcard and on every missing name up to the closest encloser."""
        if self._store.exists(name) or _is_wildcard(name):
            return name
        zone = self.zone_of(name)
        if zone is None:
            return name
        for ancestor in ancestors(name):
            if ancestor == name:
                continue
            apex = ancestor == zone or len(ancestor) < len(zone)
            if not apex:  # whether it exists decides the closest encloser (the apex always
                ask.depends.add(ancestor)  # does: depending on it would drop the entry at
            if apex or self._store.exists(ancestor):  # every change anywhere in the zone)
                wildcard = "*." + ancestor if ancestor != "." else "*."
                ask.depends.add(wildcard)
                return wildcard if self._store.exists(wildcard) else name
        return name

    def _addresses(
        self,
        ask: _Asked,
        name: str,
        rtype: str,
        holder: str | None = None,
        held: list[Record] | None = None,
    ) -> list[Record]:
        """``name``'s records of ``rtype`` (``holder``: ``_holder(name)``, when known; ``held``:
        the holder's records, when already looked up)."""
        ask.depends.add(name)
        records = held or self._store.lookup(holder or self._holder(ask, name), rtype)
        if not records and _is_wildcard(name):
            ask.depends.add(wildcard_parts(name)[1])  # any change in that subtree
            records = self._store.matching(name, rtype)
        # Only addresses on two or more networks make the answer depend on the asker (an etcd
        # copy of a local address, with no network, is the same address: it does not count).
        if rtype in _ADDRESS_TYPES:
            scopes = {r.scope for r in records if r.scope is not None}
            if len(scopes) > 1:
                ask.per_client = True
                ask.scopes |= scopes
                return nearest(records, ask.client_ip)
        return records

    def _answer(self, ask: _Asked, qname: str, qtype: int, spelled: str) -> Answer | None:
        zone = self.zone_of(qname)
        if zone is None:
            return self._outside_zone(qname, qtype, spelled)
        if qname == zone and qtype == QTYPE.SOA:
            return Answer(RCODE_NOERROR, True, [[self._soa(zone)]])
        if qname == zone and qtype == QTYPE.NS:
            return self._nameservers(ask, zone, spelled)
        if qname in dns_sd.browse_domain_names(zone):  # RFC 6763 11: the zone is browsable
            if qtype != QTYPE.PTR:
                return self._negative(zone, RCODE_NOERROR)
            ptr = Record(qname, "PTR", zone, self._soa_ttl)
            return Answer(RCODE_NOERROR, True, [_rrset([ptr], spelled)])
        if qtype == QTYPE_ANY:
            if qname == zone or self._store.exists(qname):
                hinfo = RR(
                    label_of(spelled), QTYPE.HINFO, ttl=self._negative_ttl, rdata=_RFC8482_HINFO
                )
                return Answer(RCODE_NOERROR, True, [[hinfo]])
            return self._negative(zone, RCODE_NXDOMAIN)
        return self._lookup(ask, zone, qname, qtype, spelled)

    def _outside_zone(self, qname: str, qtype: int, spelled: str) -> Answer | None:
        rtype = QTYPE.get(qtype, "")
        records = self._store.lookup(qname, rtype)
        if qtype == QTYPE.PTR and not records:  # an explicit PTR wins (CoreDNS)
            records = self._automatic_ptr(qname)
        return Answer(RCODE_NOERROR, True, [_rrset(records, spelled)]) if records else None

    def _lookup(self, ask: _Asked, zone: str, qname: str, qtype: int, spelled: str) -> Answer:
        rtype = QTYPE.get(qtype, "")
        answer: list[list[RR]] = []
        name, owner_spelling = qname, spelled
        seen: set[str] = set()
        while True:
            # The common case first: a name holding records of the type is its own holder
            # (one dict lookup); otherwise ``_holder`` walks the ancestors, once per name.
            held = self._store.lookup(name, rtype)
            holder = name if held else self._holder(ask, name)
            records = self._addresses(ask, name, rtype, holder, held)
            if rtype == "PTR" and not records:  # an explicit PTR wins over automatic ones
                records = self._automatic_ptr(name)
            if records:
                answer.append(_rrset(records, owner_spelling))
                additional = self._additional(ask, records)
                return Answer(RCODE_NOERROR, True, answer, additional=additional)
            cname = self._store.lookup(holder, "CNAME") if rtype != "CNAME" else []
            if not cname or name in seen or len(seen) >= MAX_CNAME_CHAIN:
                break
            seen.add(name)
            answer.append(_rrset(cname[:1], owner_spelling))
            name = owner_spelling = str(cname[0].value)
            target_zone = self.zone_of(name)
            if target_zone is None:
                # Outside our zones: the chain asks upstream for the rest, if it may.
                return Answer(RCODE_NOERROR, True, answer, follow=name)
            zone = target_zone
        if rtype == "TXT" and not answer and dns_sd.is_instance_name(name):
            srv = self._store.lookup(name, "SRV")
            if srv:  # RFC 6763 6.1: an instance without TXT data has one empty string
                empty = Record(name, "TXT", ("",), min(r.ttl for r in srv))
                return Answer(RCODE_NOERROR, True, [_rrset([empty], owner_spelling)])
        exists = name == zone or self._store.exists(name) or holder != name
        return self._negative(zone, RCODE_NOERROR if exists else RCODE_NXDOMAIN, answer)

    def _automatic_ptr(self, name: str) -> list[Record]:
        ttl = self._negative_ttl
        return [Record(name, "PTR", target, ttl) for target in self._store.reverse(name)]

    def _additional(self, ask: _Asked, records: list[Record]) -> list[RR]:
        """Addresses of in-store SRV, MX and NS targets; a target that is an in-zone CNAME
        brings its chain and the final addresses (as CoreDNS does)."""
        targets: dict[str, None] = {}
        extra: list[RR] = []
        browsed = [str(r.value) for r in records if r.rtype == "PTR"]
        for instance in [i for i in browsed if dns_sd.is_instance_name(i)][:MAX_BROWSED]:
            extra += self._instance(ask, instance, targets)
        for record in records:
            if isinstance(record.value, SrvValue):
                targets[record.value.target] = None
            elif isinstance(record.value, MxValue):
                targets[record.value.exchange] = None
            elif record.rtype == "NS":
                targets[str(record.value)] = None
        for target in targets:
            name, seen = target, set[str]()
            while True:
                # The same address from several sources (local Docker, its etcd copy) once.
                unique = {
                    (r.rtype, r.value): r
                    for t in _ADDRESS_TYPES
                    for r in self._addresses(ask, name, t)
                }
                found = [to_rr(r, name) for r in unique.values()]
                extra.extend(found)
                cname = self._store.lookup(self._holder(ask, name), "CNAME")
                if found or not cname or name in seen or len(seen) >= MAX_CNAME_CHAIN:
                    break
                seen.add(name)
                owner, name = name, str(cname[0].value)
                if self.zone_of(name) is None:
                    break  # a chain that leaves the zones is the client's to follow
                extra.append(to_rr(cname[0], owner))
        return extra

    def _instance(self, ask: _Asked, instance: str, targets: dict[str, None]) -> list[RR]:
        """A browsed DNS-SD instance's SRV and TXT for the additional section (RFC 6763 12.1),
        its SRV targets added to ``targets`` (their addresses follow)."""
        found: list[RR] = []
        for rtype in ("SRV", "TXT"):
            records = self._addresses(ask, instance, rtype)
            if records:
                found += _rrset(records, instance)
            for record in records:
                if isinstance(record.value, SrvValue):
                    targets[record.value.target] = None
        return found

    def _negative(self, zone: str, rcode: int, chain: list[list[RR]] | None = None) -> Answer:
        """NXDOMAIN or NODATA with the SOA, after the CNAME ``chain`` that led there; SERVFAIL
        while the zone is still loading (the name may be on its way)."""
        if self._loading(zone):
            return Answer(RCODE_SERVFAIL)
        soa = self._soa(zone, self._negative_ttl)
        return Answer(rcode, True, chain or (), authority=[soa])

    def _soa(self, zone: str, ttl: int | None = None) -> RR:
        serial = (self._serial_base + self._store.generation) % 2**32
        label = "" if zone == "." else zone
        times = (serial, 3600, 600, 86400, self._negative_ttl)
        rdata = SOA("ns.dns." + label, "hostmaster." + label, times)  # as CoreDNS and SkyDNS
        return RR(zone, QTYPE.SOA, ttl=self._soa_ttl if ttl is None else ttl, rdata=rdata)

    def _nameservers(self, ask: _Asked, zone: str, spelled: str) -> Answer:
        """The apex NS RRset: the etcd ``ns.dns.<zone>`` keys' names when there are any,
        else ``ns.dns.<zone>``; their addresses (glue) in the additional section."""
        records = self._store.lookup(zone, "NS")
        if not records:
            label = "" if zone == "." else zone
            records = [Record(zone, "NS", "ns.dns." + label, self._soa_ttl)]
        additional = self._additional(ask, records)
        return Answer(RCODE_NOERROR, True, [_rrset(records, spelled)], additional=additional)
