"""The SkyDNS / CoreDNS-etcd record format: etcd keys <-> DNS names, JSON values -> records.

Pure functions, no I/O.  A key is the prefix plus the name's labels reversed
(``web.prod.docker.`` <-> ``/skydns/docker/prod/web``); a value is JSON with ``host`` (an IP:
A/AAAA; a name: CNAME and SRV/MX target), ``port``, ``priority`` (default 10), ``weight``
(0/absent counts as 100; a share: answers give each record its percent of the priority's
total, see ``records.srv_weights``), ``text`` (TXT), ``mail`` (MX),
``ttl``, ``targetstrip``, ``group`` and dnsd's own ``reverse`` (false: no automatic PTR),
``dnsd_node`` (the publishing node) and ``dnsd_txt`` (a DNS-SD TXT as a list of strings);
unknown fields are ignored.  A name answers for its whole
subtree (every key at or below it), filtered by group as CoreDNS does.  A malformed value makes
``parse_value`` raise ``ValueError`` (the caller skips that key and counts it).
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from dnsd.admission import name_problem
from dnsd.names import IPV4, in_zone
from dnsd.protocol import MAX_TTL
from dnsd.record import MxValue, Record, SrvValue

DEFAULT_PRIORITY = 10
DEFAULT_WEIGHT = 100
_FIELDS = {
    "host": str, "port": int, "priority": int, "weight": int, "text": str, "mail": bool,
    "ttl": int, "targetstrip": int, "group": str, "reverse": bool, "dnsd_node": str,
    "dnsd_txt": list,
}  # fmt: skip
# dnsd's own keys carry the publishing node: such a key stands for its name without the last
# label (the instance) and answers exactly as the container's own host does (see
# ``published_records``); CoreDNS ignores the field and reads them as SkyDNS keys.
NODE_FIELD = "dnsd_node"
# A DNS-SD TXT (RFC 6763 6: one "key=value" string each) for a dnsd key's SRV name; SkyDNS's
# ``text`` is one string only.
TXT_FIELD = "dnsd_txt"


@dataclass(frozen=True, slots=True)
class Service:
    """One etcd key's value."""

    key: str  # the etcd key, without a trailing slash
    name: str  # the key's own DNS name ("x1.web.prod.docker.")
    host: str = ""
    port: int = 0
    priority: int = DEFAULT_PRIORITY
    weight: int = 0
    text: str = ""
    mail: bool = False
    ttl: int = 0
    targetstrip: int = 0
    group: str = ""
    reverse: bool = True  # dnsd's own field: false = no automatic PTR for this address
    node: str = ""  # dnsd's own field (dnsd_node): the node that published the key
    txt: tuple[str, ...] = ()  # dnsd's own field (dnsd_txt): a DNS-SD TXT, string by string
    lease_ttl: int = 0  # granted TTL of the key's lease, 0 if none
    lease: int = 0  # the key's lease ID, 0 if none
    family: int = -1  # 4 or 6: the host is an address; 0: a name or none; -1: not yet known

    def __post_init__(self) -> None:
        if self.family < 0:
            object.__setattr__(self, "family", _family(self.host))

    @property
    def is_ip(self) -> bool:
        return self.family > 0


def key_to_name(key: str, prefix: str) -> str:
    """``/skydns/docker/prod/web`` -> ``web.prod.docker.``."""
    path = key[len(prefix) :].strip("/")
    labels = [label for label in path.split("/") if label]
    return (".".join(reversed(labels)) + ".").lower() if labels else "."


def presence_prefix(prefix: str) -> str:
    """Where publishing dnsds say they are there (``<this>/<node>``, under their lease), even
    with nothing to publish: beside the record prefix, never under it (never a DNS name)."""
    return f"/dnsd-nodes{prefix.rstrip('/')}/"


def name_to_key(name: str, prefix: str) -> str:
    """``web.prod.docker.`` -> ``/skydns/docker/prod/web``."""
    labels = [label for label in name.rstrip(".").split(".") if label]
    return prefix.rstrip("/") + "/" + "/".join(reversed(labels))


def parse_value(key: str, name: str, raw: bytes, lease_ttl: int = 0, lease: int = 0) -> Service:
    """The key's value as a ``Service``; ``ValueError`` saying why when any field could not be
    served (the caller skips the key): every field is checked here, so a value that parses
    can always enter the store."""
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    fields: dict[str, object] = {}
    for field, value in document.items():  # the value's own fields: usually a few
        kind = _FIELDS.get(field)
        if kind is None or value is None:  # unknown fields are other writers' own
            continue
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{field!r} must be a number, got {_short(value)}")
        if not isinstance(value, kind):
            raise ValueError(f"{field!r} must be a {kind.__name__}, got {_short(value)}")
        fields[field] = value
    for field in ("port", "priority", "weight"):
        if field in fields and not 0 <= fields[field] <= 65535:  # type: ignore[operator]
            raise ValueError(f"{field!r} out of range")
    if "ttl" in fields and not 0 <= fields["ttl"] <= MAX_TTL:  # type: ignore[operator]
        raise ValueError("'ttl' out of range")
    labels = name.rstrip(".").count(".") + 1 if name != "." else 0
    if not 0 <= int(fields.get("targetstrip", 0)) < max(labels, 1):  # type: ignore[call-overload]
        raise ValueError(f"'targetstrip' must leave at least one label of {name}")
    if NODE_FIELD in fields:
        fields["node"] = sys.intern(str(fields.pop(NODE_FIELD)))  # one string per node
    if TXT_FIELD in fields:
        fields["txt"] = _txt(fields.pop(TXT_FIELD))  # type: ignore[arg-type]
    fields["host"], fields["family"] = _host(str(fields.get("host", "")))
    if not fields["host"] and not fields.get("text"):
        raise ValueError("needs a 'host' or a 'text'")
    return Service(key=key, name=name, lease_ttl=lease_ttl, lease=lease, **fields)  # type: ignore[arg-type]


def _txt(strings: list[object]) -> tuple[str, ...]:
    if not strings or len(strings) > 64:
        raise ValueError("'dnsd_txt' must hold 1 to 64 strings")
    texts = []
    for text in strings:
        if not isinstance(text, str) or len(text.encode()) > 255:
            raise ValueError(f"'dnsd_txt' strings are text of 255 bytes at most: {_short(text)}")
        texts.append(sys.intern(text))
    return tuple(texts)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _host(text: str) -> tuple[str, int]:
    """An address in its canonical form, or a lower-case name without the final dot; and
    the address family (0 for a name)."""
    host = text.strip().rstrip(".").lower()
    if not host:
        return "", 0
    if IPV4.fullmatch(host):  # canonical already (no leading zeros): the common case, cheaply
        return sys.intern(host), 4
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        if getattr(address, "scope_id", None):  # fe80::1%eth0: means nothing to another host
            raise ValueError(f"'host' is a scoped address: {_short(text)}")
        return sys.intern(str(address)), address.version
    if ":" in host or name_problem(host + ".") is not None:
        raise ValueError(f"'host' is neither an IP address nor a DNS name: {_short(text)}")
    return sys.intern(host), 0


def _family(text: str) -> int:
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return 0


def group_filter(services: list[Service]) -> list[Service]:
    """CoreDNS's rule: the shortest keys' group decides; services of another group are dropped,
    services without a group always stay; disagreeing groups at that level disable filtering."""
    if not services:
        return services
    depth = [s.key.count("/") for s in services]
    shortest = min(depth)
    groups = {s.group for s, d in zip(services, depth, strict=True) if d == shortest and s.group}
    if len(groups) != 1:
        return services
    (group,) = groups
    return [s for s in services if not s.group or s.group == group]


def service_ttl(service: Service, default_ttl: int) -> int:
    ttl = service.ttl or default_ttl
    return min(ttl, service.lease_ttl) if service.lease_ttl else ttl


def target_of(service: Service) -> str:
    """The name an SRV/MX/NS record of the key points at (interned: shared by every record)."""
    if not service.is_ip:
        return sys.intern(service.host + ".")
    if not service.targetstrip:
        return service.name
    labels = service.name.rstrip(".").split(".")
    return sys.intern(".".join(labels[service.targetstrip :]) + ".")


def service_records(names: Iterable[str], service: Service, default_ttl: int) -> list[Record]:
    """What one key gives each of ``names`` (its own name and ancestors) on its own: A/AAAA,
    SRV, TXT, MX and an explicit PTR; never a CNAME, which depends on the keys beside it.
    The values are built once and shared by the names' records."""
    records: list[Record] = []
    ttl = service_ttl(service, default_ttl)
    target = target_of(service) if service.host else ""
    if service.host:
        weight = service.weight or DEFAULT_WEIGHT
        srv = SrvValue(service.priority, weight, service.port, target, shares=True)
    mx = MxValue(service.priority, target) if service.mail and service.host else None
    text = _chunks(service.text) if service.text else None
    ptr = ptr_record(service, default_ttl)
    rtype = "A" if service.family == 4 else "AAAA"
    for name in names:
        if service.host:
            if service.family:
                # The automatic PTR of an address points at the name the key stands for: its
                # own name, or what targetstrip leaves of it (an instance label stripped).
                reverse = service.reverse and name == target
                records.append(Record(name, rtype, service.host, ttl, reverse=reverse))
            records.append(Record(name, "SRV", srv, ttl))
            if mx is not None:
                records.append(Record(name, "MX", mx, ttl))
        if text is not None:
            records.append(Record(name, "TXT", text, ttl))
        if ptr is not None and service.name == name:
            records.append(ptr)
    return records


def stands_for(service: Service) -> str:
    """The name a key's records are served at: dnsd's own keys stand for their name without
    the instance label; other keys for their own name (and its ancestors)."""
    if not service.node:
        return service.name
    return sys.intern(service.name.partition(".")[2] or ".")  # the mirror's owner name too


def published_records(service: Service, default_ttl: int) -> list[Record]:
    """A dnsd key's records, as the container's own host serves them: its address (A/AAAA,
    with the automatic PTR unless ``reverse`` is false), or with a name host and a port one
    SRV whose weight is the container's own (RFC 2782 weight, not a share), and TXT.  No
    SRV from an address key (no port-0 records), no CNAME, nothing at the instance name or at
    ancestors."""
    name = stands_for(service)
    ttl = service_ttl(service, default_ttl)
    records: list[Record] = []
    if service.family:
        rtype = "A" if service.family == 4 else "AAAA"
        records.append(Record(name, rtype, service.host, ttl, reverse=service.reverse))
    elif service.host and service.port:
        target = sys.intern(service.host + ".")
        # A container's group names (compose service, dnsd.service) point at its own name:
        # not DNS-SD instances of their own, as on the container's host (docker_names).
        listed = name.split(".", 2)[2:] == [target]
        srv = SrvValue(service.priority, service.weight, service.port, target, listed=listed)
        records.append(Record(name, "SRV", srv, ttl))
    if service.txt:
        records.append(Record(name, "TXT", service.txt, ttl))
    elif service.text:
        records.append(Record(name, "TXT", _chunks(service.text), ttl))
    return records


def cname_for(name: str, services: list[Service], default_ttl: int) -> list[Record]:
    """A name whose only key (after the group filter) has a name host is a CNAME to it."""
    if len(services) != 1:
        return []
    (service,) = services
    if service.node or not service.host or service.is_ip or service.host + "." == name:
        return []
    return [Record(name, "CNAME", service.host + ".", service_ttl(service, default_ttl))]


def records_for(name: str, services: Iterable[Service], default_ttl: int) -> list[Record]:
    """Every record ``name`` answers with, given the services at and below it, by SkyDNS's
    rules (dnsd's own keys are not read this way: ``published_records``)."""
    chosen = group_filter(sorted((s for s in services if not s.node), key=lambda s: s.key))
    records: list[Record] = []
    srv_seen: set[tuple[int, int, str]] = set()  # one SRV per (priority, port, target)
    for service in chosen:
        for record in service_records((name,), service, default_ttl):
            if isinstance(record.value, SrvValue):
                srv = record.value
                if (srv.priority, srv.port, srv.target) in srv_seen:
                    continue
                srv_seen.add((srv.priority, srv.port, srv.target))
            records.append(record)
    return records + cname_for(name, chosen, default_ttl)


def apex_markers(zone: str) -> tuple[str, str]:
    """The names whose keys speak for a zone's apex: ``ns.dns.<zone>`` (nameservers) and
    ``apex.dns.<zone>`` (the apex's own addresses), as CoreDNS reads them."""
    label = "" if zone == "." else zone
    return "ns.dns." + label, "apex.dns." + label


def speaks_for_apex(name: str, zone: str) -> bool:
    return any(in_zone(name, marker) for marker in apex_markers(zone))


def apex_service_records(zone: str, service: Service, default_ttl: int) -> list[Record]:
    """What one key gives its zone's apex: an ``apex.dns`` key its address; an ``ns.dns`` key
    with an address host names a nameserver, the key's name less ``targetstrip`` labels (as
    CoreDNS), whose address is the glue.  Other keys never aggregate up to the apex."""
    ns_marker, apex_marker = apex_markers(zone)
    if in_zone(service.name, apex_marker):
        found = service_records((zone,), service, default_ttl)
        return [r for r in found if r.rtype in ("A", "AAAA")]
    if service.is_ip and in_zone(service.name, ns_marker):
        return [Record(zone, "NS", target_of(service), service_ttl(service, default_ttl))]
    return []


def apex_records(zone: str, services: Iterable[Service], default_ttl: int) -> list[Record]:
    """The apex's NS and A/AAAA records from every key that speaks for it."""
    return [
        record
        for service in sorted(services, key=lambda s: s.key)
        for record in apex_service_records(zone, service, default_ttl)
    ]


def _chunks(text: str) -> tuple[str, ...]:
    data = text.encode()
    parts = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    return tuple(part.decode(errors="replace") for part in parts)


def ptr_record(service: Service, default_ttl: int) -> Record | None:
    """A key under ``/<prefix>/arpa/...`` whose host is a name is an explicit PTR."""
    if not service.name.endswith((".in-addr.arpa.", ".ip6.arpa.")) or not service.host:
        return None
    if service.is_ip:
        return None
    return Record(service.name, "PTR", service.host + ".", service_ttl(service, default_ttl))
