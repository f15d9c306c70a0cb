"""The SkyDNS / CoreDNS-etcd record format: etcd keys <-> DNS names, JSON values -> records.

Pure functions, no I/O.  A key is the prefix plus the name's labels reversed
(``web.prod.docker.`` <-> ``/skydns/docker/prod/web``); a value is JSON with ``host`` (an IP:
A/AAAA; a name: CNAME and SRV/MX target), ``port``, ``priority`` (default 10), ``weight``
(0/absent counts as 100; a share: answers give each record its percent of the priority's
total, see ``records.srv_weights``), ``text`` (TXT), ``mail`` (MX),
``ttl``, ``targetstrip``, ``group`` and dnsd's own ``reverse`` (false: no automatic PTR);
unknown fields are ignored.  A name answers for its whole
subtree (every key at or below it), filtered by group as CoreDNS does.  A malformed value makes
``parse_value`` raise ``ValueError`` (the caller skips that key and counts it).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass

from dnsd.records import MxValue, Record, SrvValue

DEFAULT_PRIORITY = 10
DEFAULT_WEIGHT = 100
_FIELDS = {
    "host": str, "port": int, "priority": int, "weight": int, "text": str, "mail": bool,
    "ttl": int, "targetstrip": int, "group": str, "reverse": bool,
}  # fmt: skip


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
    lease_ttl: int = 0  # granted TTL of the key's lease, 0 if none
    is_ip: bool = dataclasses.field(
        init=False, compare=False
    )  # the host is an address (parsed once)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_ip", _is_ip(self.host))


def key_to_name(key: str, prefix: str) -> str:
    """``/skydns/docker/prod/web`` -> ``web.prod.docker.``."""
    path = key[len(prefix) :].strip("/")
    labels = [label for label in path.split("/") if label]
    return (".".join(reversed(labels)) + ".").lower() if labels else "."


def name_to_key(name: str, prefix: str) -> str:
    """``web.prod.docker.`` -> ``/skydns/docker/prod/web``."""
    labels = [label for label in name.rstrip(".").split(".") if label]
    return prefix.rstrip("/") + "/" + "/".join(reversed(labels))


def parse_value(key: str, name: str, raw: bytes, lease_ttl: int = 0) -> Service:
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    fields: dict[str, object] = {}
    for field, kind in _FIELDS.items():
        if field not in document or document[field] is None:
            continue
        value = document[field]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{field!r} must be a number, got {value!r}")
        if not isinstance(value, kind):
            raise ValueError(f"{field!r} must be a {kind.__name__}, got {value!r}")
        fields[field] = value
    for field in ("port", "priority", "weight"):
        if not 0 <= int(fields.get(field, 0)) <= 65535:  # type: ignore[call-overload]
            raise ValueError(f"{field!r} out of range")
    if not 0 <= int(fields.get("ttl", 0)) < 2**31:  # type: ignore[call-overload]
        raise ValueError("'ttl' out of range")
    host = str(fields.get("host", "")).strip().rstrip(".").lower() if "host" in fields else ""
    if host and not _is_ip(host) and not _is_hostname(host):
        raise ValueError(f"'host' is neither an IP address nor a DNS name: {host!r}")
    fields["host"] = host
    if not host and not fields.get("text"):
        raise ValueError("needs a 'host' or a 'text'")
    return Service(key=key, name=name, lease_ttl=lease_ttl, **fields)  # type: ignore[arg-type]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_hostname(text: str) -> bool:
    labels = text.split(".")
    return len(text) <= 253 and all(0 < len(label) <= 63 and " " not in label for label in labels)


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


def _target(service: Service) -> str:
    if not service.is_ip:
        return service.host + "."
    labels = service.name.rstrip(".").split(".")
    return ".".join(labels[service.targetstrip :]) + "." if service.targetstrip else service.name


def records_for(name: str, services: Iterable[Service], default_ttl: int) -> list[Record]:
    """Every record ``name`` answers with, given the services at and below it."""
    chosen = group_filter(sorted(services, key=lambda s: s.key))
    records: list[Record] = []
    srv_seen: set[tuple[int, int, str]] = set()  # one SRV per (priority, port, target)
    for service in chosen:
        ttl = service_ttl(service, default_ttl)
        if service.host and service.is_ip:
            address = ipaddress.ip_address(service.host)
            rtype = "A" if address.version == 4 else "AAAA"
            # The automatic PTR of an address points at the name the key stands for: its own
            # name, or what targetstrip leaves of it (a publisher's instance label stripped).
            reverse = service.reverse and name == _target(service)
            records.append(Record(name, rtype, str(address), ttl, reverse=reverse))
        target = _target(service) if service.host else ""
        if target and (service.priority, service.port, target) not in srv_seen:
            srv_seen.add((service.priority, service.port, target))
            weight = service.weight or DEFAULT_WEIGHT
            srv = SrvValue(service.priority, weight, service.port, target, shares=True)
            records.append(Record(name, "SRV", srv, ttl))
        if service.text:
            records.append(Record(name, "TXT", _chunks(service.text), ttl))
        if service.mail and service.host:
            records.append(Record(name, "MX", MxValue(service.priority, _target(service)), ttl))
    hosts = [s for s in chosen if s.host and not s.is_ip]
    if len(chosen) == 1 and hosts and hosts[0].host + "." != name:
        records.append(
            Record(name, "CNAME", hosts[0].host + ".", service_ttl(hosts[0], default_ttl))
        )
    return records


def apex_markers(zone: str) -> tuple[str, str]:
    """The names whose keys speak for a zone's apex: ``ns.dns.<zone>`` (nameservers) and
    ``apex.dns.<zone>`` (the apex's own addresses), as CoreDNS reads them."""
    label = "" if zone == "." else zone
    return "ns.dns." + label, "apex.dns." + label


def speaks_for_apex(name: str, zone: str) -> bool:
    return any(name == m or name.endswith("." + m) for m in apex_markers(zone))


def apex_records(zone: str, services: Iterable[Service], default_ttl: int) -> list[Record]:
    """The apex's NS and A/AAAA records: every ``ns.dns`` key with an address host names a
    nameserver (the key's own name, its address the glue); ``apex.dns`` keys give the apex's
    addresses.  Other keys never aggregate up to the apex."""
    ns_marker, apex_marker = apex_markers(zone)
    addresses = [s for s in services if s.name == apex_marker or s.name.endswith("." + apex_marker)]
    records = [r for r in records_for(zone, addresses, default_ttl) if r.rtype in ("A", "AAAA")]
    nameservers = {
        s.name: service_ttl(s, default_ttl)
        for s in sorted(services, key=lambda s: s.key)
        if s.is_ip and (s.name == ns_marker or s.name.endswith("." + ns_marker))
    }
    records += [Record(zone, "NS", name, ttl) for name, ttl in nameservers.items()]
    return records


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
