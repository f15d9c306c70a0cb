"""Docker naming: one container's inspect data -> the records it publishes.

Pure functions, no I/O: the Docker source calls ``container_records`` for every inspected
container and writes the result to the store.  Names (zone ``docker.`` by default):

- ``<name>``, ``<hostname>`` (when set explicitly), ``<service>.<project>`` (compose),
  ``<dnsd.service>``, every ``dnsd.name``: all the container's addresses, each tagged with its
  network so a client on that network gets only that address;
- ``<name>.<network>``, ``<alias>.<network>`` and ``<alias>``: the address on that network;
- ``_<service>._<proto>.<owner>`` SRV for every exposed port, under the container name, the
  compose name and the ``dnsd.service`` name, targeting the container's own name; under the
  container name also a TXT of its ``dnsd.txt.<key>=<value>`` labels (``key=value`` strings),
  which makes it a DNS-SD instance (``dns_sd``) with that TXT;
- ``*.<name>`` with ``dnsd.wildcard=true`` (RFC 4592: any name below that does not exist);
- dnsdock's labels and environment variables, for users moving from dnsdock: ``ignore``
  (``com.dnsdock.ignore``, ``DNSDOCK_IGNORE``, ``SERVICE_IGNORE``: not served), ``alias``
  (``DNSDOCK_ALIAS`` too: names, as ``dnsd.name``), ``ttl`` (``DNSDOCK_TTL``; ``dnsd.ttl``
  wins), and ``<name>.<image>[.<region>]`` where ``name`` (``DNSDOCK_NAME``; the first of
  ``tags``/``SERVICE_TAGS``), ``image`` (``DNSDOCK_IMAGE``, ``SERVICE_NAME``) and ``region``
  (``SERVICE_REGION``) default to the container's name and image: given when any of them is
  set, or for every container when ``DockerNaming.image_names`` is on; environment variables
  win over labels, as in dnsdock;
- the automatic PTR of every address points to ``<name>``.

Bad labels are reported in ``Built.problems`` and the container is still served with defaults;
so are ``dnsd.*`` and ``com.dnsdock.*`` labels dnsd does not know (one line per container).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from dnsd.names import in_zone
from dnsd.protocol import MAX_TTL
from dnsd.record import Record, SrvValue
from dnsd.resolve.scopes import scope_of
from dnsd.sources.docker_labels import (
    DEFAULT_PRIORITY,
    DEFAULT_WEIGHT,
    DNSDOCK_ALIAS,
    LABEL_PREFIX,
    WELL_KNOWN_PORTS,
    dns_label,
    dns_name,
    dnsdock_settings,
    image_label,
    label_flag,
    label_number,
    txt_strings,
    unknown_labels,
)


@dataclass(frozen=True)
class DockerNaming:
    zone: str = "docker."
    ttl: int = 5
    serve_starting: bool = True
    image_names: bool = False  # also <name>.<image> (dnsdock)


@dataclass
class Built:
    records: list[Record] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    withheld: str | None = None  # why the container is not served, if it is not
    name: str = ""
    # Names that only make sense on this host (``<name>.<network>``): never published.
    local_names: set[str] = field(default_factory=set)
    # (container port, proto) -> host port, for ports published on the host (-p).
    published: dict[tuple[int, str], int] = field(default_factory=dict)
    health: str | None = None  # healthcheck status, if the container has one
    notes: list[str] = field(default_factory=list)  # names changed to be DNS-safe
    # For name ownership (docker_claims): the container's own names (its name, name.network,
    # SRV names under its name), its group (dnsd.service, else compose service.project) and
    # creation time.  Every other name in ``records`` is an extra name.
    own_names: set[str] = field(default_factory=set)
    group: str = ""
    # The service names it belongs to, absolute (compose service.project, dnsd.service): a
    # name at or below one is shared with the other members of that service.
    service_names: tuple[str, ...] = ()
    created: str = ""
    # What is served after name ownership is applied (set by the Docker source), and for each
    # name not served, the names of the container(s) holding it.
    served: list[Record] = field(default_factory=list)
    conflicts: dict[str, str] = field(default_factory=dict)


@dataclass
class _Address:
    ip: str
    rtype: str
    scope: str
    network: str
    aliases: list[str]


def _gateway(value: object) -> str:
    """The network's gateway address, or "" (none, or not an address)."""
    try:
        return str(ipaddress.ip_address(str(value))) if value else ""
    except ValueError:
        return ""


def _addresses(networks: dict[str, Any]) -> list[_Address]:
    found = []
    for network, settings in sorted((networks or {}).items()):
        settings = settings or {}
        aliases = [dns_name(a) for a in settings.get("Aliases") or []]
        for key, length_key, gateway_key, rtype in (
            ("IPAddress", "IPPrefixLen", "Gateway", "A"),
            ("GlobalIPv6Address", "GlobalIPv6PrefixLen", "IPv6Gateway", "AAAA"),
        ):
            ip = settings.get(key) or ""
            if not ip:
                continue
            length = settings.get(length_key) or (32 if rtype == "A" else 128)
            try:
                cidr = str(ipaddress.ip_network(f"{ip}/{length}", strict=False))
            except ValueError:
                continue
            scope = scope_of(cidr, _gateway(settings.get(gateway_key)))
            found.append(_Address(ip, rtype, scope, dns_label(network), [a for a in aliases if a]))
    return found


def health_of(attrs: dict[str, Any]) -> str | None:
    return ((attrs.get("State") or {}).get("Health") or {}).get("Status")


def _withheld(attrs: dict[str, Any], naming: DockerNaming) -> str | None:
    state = attrs.get("State") or {}
    if not state.get("Running"):
        return "not running"
    if state.get("Paused"):
        return "paused"
    health = health_of(attrs)
    if health == "unhealthy":
        return "unhealthy"
    if health == "starting" and not naming.serve_starting:
        return "health starting"
    return None


def container_records(attrs: dict[str, Any], naming: DockerNaming) -> Built:
    built = Built(health=health_of(attrs))
    config = attrs.get("Config") or {}
    labels: dict[str, str] = {str(k): str(v) for k, v in (config.get("Labels") or {}).items()}
    raw_name = str(attrs.get("Name", "")).lstrip("/")
    name = dns_label(raw_name)
    built.name = name
    if name and name != raw_name.lower():
        built.notes.append(f"container name {raw_name!r} is served as {name!r}")
    if not name:
        built.problems.append(f"container name {attrs.get('Name')!r} has no DNS-safe letters")
        built.withheld = "no usable name"
        return built
    unknown = unknown_labels(labels)
    if unknown:
        built.problems.append(f"labels dnsd does not know (ignored): {', '.join(unknown)}")
    if label_flag(labels, LABEL_PREFIX + "ignore", built.problems):
        built.withheld = "dnsd.ignore"
        return built
    dnsdock = dnsdock_settings(labels, [str(e) for e in config.get("Env") or []])
    if "ignore" in dnsdock:  # dnsdock ignores a container that carries it at all
        built.withheld = "com.dnsdock.ignore"
        return built
    built.withheld = _withheld(attrs, naming)
    if built.withheld:
        return built
    zone = "" if naming.zone == "." else naming.zone
    ttl = naming.ttl
    if "ttl" in dnsdock:
        ttl = label_number({"com.dnsdock.ttl": dnsdock["ttl"]}, "com.dnsdock.ttl", ttl, MAX_TTL,
                      built.problems)  # fmt: skip
    ttl = label_number(labels, LABEL_PREFIX + "ttl", ttl, MAX_TTL, built.problems)
    addresses = _addresses((attrs.get("NetworkSettings") or {}).get("Networks") or {})
    if "alias" in dnsdock:
        labels = {**labels, DNSDOCK_ALIAS: dnsdock["alias"]}
    group_names = _group_names(attrs, config, labels, name, built.problems, naming.zone)
    own_extra = []  # names only this container can have (under its name, or with it)
    if label_flag(labels, LABEL_PREFIX + "wildcard", built.problems):
        own_extra.append(f"*.{name}")
    dnsdock_name = _dnsdock_name(dnsdock, name, str(config.get("Image") or ""), built.problems)
    if dnsdock_name and (naming.image_names or {"name", "tags", "image", "region"} & set(dnsdock)):
        own_extra.append(dnsdock_name)
    records = _address_records(addresses, name, [*group_names, *own_extra], zone, ttl, built)
    canonical = f"{name}.{zone}"
    if addresses:
        owners = [name, *_srv_owners(attrs, labels)]
        records.update(_srv_records(attrs, labels, owners, canonical, zone, ttl, built.problems))
    built.records = sorted(records, key=lambda r: (r.name, r.rtype, str(r.value)))
    built.own_names = {r.name for r in records if in_zone(r.name, canonical)} | {
        f"{name}.{a.network}.{zone}" for a in addresses if a.network
    }
    built.own_names |= {f"{extra}.{zone}" for extra in own_extra}
    groups = _srv_owners(attrs, labels)
    built.group = groups[-1] if groups else ""  # dnsd.service wins over the compose service
    built.service_names = tuple(f"{group}.{zone}" for group in groups)
    built.created = str(attrs.get("Created") or "")
    built.published = published_ports(attrs)
    return built


def _address_records(
    addresses: list[_Address], name: str, extra: list[str], zone: str, ttl: int, built: Built
) -> set[Record]:
    """Each address at the container's name (with its PTR), at its extra names, and on its
    network at ``<name>.<network>`` and its aliases (host-local names, noted in ``built``)."""
    records: set[Record] = set()
    for address in addresses:

        def add(owner: str, reverse: bool = False, address: _Address = address) -> None:
            records.add(
                Record(f"{owner}.{zone}", address.rtype, address.ip, ttl, address.scope, reverse)
            )

        add(name, reverse=True)
        for group in extra:
            add(group)
        if address.network:
            add(f"{name}.{address.network}")
            built.local_names.add(f"{name}.{address.network}.{zone}")
            for alias in address.aliases:
                add(alias)
                add(f"{alias}.{address.network}")
                built.local_names.add(f"{alias}.{address.network}.{zone}")
    return records


def _dnsdock_name(dnsdock: dict[str, str], name: str, image: str, problems: list[str]) -> str:
    """dnsdock's ``<name>.<image>[.<region>]`` (relative), or "" when a part is unusable."""
    tags = [t for t in dnsdock.get("tags", "").split(",") if t.strip()]
    own = dns_label(tags[0] if tags else dnsdock.get("name") or name)
    kind = dns_name(dnsdock["image"]) if dnsdock.get("image") else image_label(image)
    region = dns_name(dnsdock.get("region", ""))
    if not own or not kind or (dnsdock.get("region") and not region):
        if {"name", "tags", "image", "region"} & set(dnsdock):
            problems.append(f"dnsdock name: unusable name, image or region in {dnsdock!r}")
        return ""
    return ".".join(part for part in (own, kind, region) if part)


def published_ports(attrs: dict[str, Any]) -> dict[tuple[int, str], int]:
    found: dict[tuple[int, str], int] = {}
    ports = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
    for key, bindings in ports.items():
        number, _, proto = str(key).partition("/")
        for binding in bindings or []:
            host_port = str((binding or {}).get("HostPort") or "")
            if number.isdigit() and host_port.isdigit():
                found[(int(number), proto or "tcp")] = int(host_port)
                break
    return found


def _group_names(
    attrs: dict[str, Any],
    config: dict[str, Any],
    labels: dict[str, str],
    name: str,
    problems: list[str],
    zone: str = "docker.",
) -> list[str]:
    """Extra names carrying all the container's addresses."""
    names: list[str] = []
    hostname = str(config.get("Hostname") or "")
    if hostname and not str(attrs.get("Id", "")).startswith(hostname):
        names.append(dns_label(hostname))
    names.extend(_srv_owners(attrs, labels))
    suffix = "." + zone.rstrip(".")
    for key in (LABEL_PREFIX + "name", DNSDOCK_ALIAS):
        for extra in (labels.get(key) or "").split(","):
            if not extra.strip():
                continue
            # dnsdock aliases are full names ("db.docker"): the zone is implied here.
            text = extra.strip().rstrip(".")
            cleaned = dns_name(text.removesuffix(suffix) if text != suffix[1:] else "")
            if not cleaned:
                problems.append(f"label {key}: unusable name {extra.strip()!r}")
                continue
            names.append(cleaned)
    return [n for n in dict.fromkeys(names) if n and n != name]


def _srv_owners(attrs: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """Service names a container belongs to: compose service.project and dnsd.service."""
    owners = []
    service = dns_label(labels.get("com.docker.compose.service", ""))
    project = dns_label(labels.get("com.docker.compose.project", ""))
    if service and project:
        owners.append(f"{service}.{project}")
    grouped = dns_name(labels.get(LABEL_PREFIX + "service", ""))
    if grouped:
        owners.append(grouped)
    return owners


def exposed_ports(attrs: dict[str, Any]) -> list[tuple[int, str]]:
    keys = set((attrs.get("Config") or {}).get("ExposedPorts") or {})
    keys |= set((attrs.get("NetworkSettings") or {}).get("Ports") or {})
    ports = set()
    for key in keys:
        number, _, proto = str(key).partition("/")
        if number.isdigit() and 0 < int(number) < 65536 and proto in ("tcp", "udp", "sctp", ""):
            ports.add((int(number), proto or "tcp"))
    return sorted(ports)


def _srv_records(
    attrs: dict[str, Any],
    labels: dict[str, str],
    owners: list[str],
    target: str,
    zone: str,
    ttl: int,
    problems: list[str],
) -> list[Record]:
    priority = label_number(labels, LABEL_PREFIX + "priority", DEFAULT_PRIORITY, 65535, problems)
    weight = label_number(labels, LABEL_PREFIX + "weight", DEFAULT_WEIGHT, 65535, problems)
    records = []
    text = txt_strings(labels, problems)
    if text is not None and not exposed_ports(attrs):
        problems.append("labels dnsd.txt.*: the container exposes no port (no service to describe)")
    for port, proto in exposed_ports(attrs):
        service = WELL_KNOWN_PORTS.get(port, str(port))
        custom = labels.get(f"{LABEL_PREFIX}srv.{port}")
        if custom is not None:
            if dns_label(custom.removeprefix("_")):
                service = dns_label(custom.removeprefix("_"))
            else:
                problems.append(f"label dnsd.srv.{port}: unusable service name {custom!r}")
        own = SrvValue(priority, weight, port, target)
        group = own._replace(listed=False)  # DNS-SD lists the container, not its groups
        for owner in dict.fromkeys(owners):
            name = f"_{service}._{proto}.{owner}.{zone}"
            records.append(Record(name, "SRV", own if owner == owners[0] else group, ttl))
            if owner == owners[0] and text is not None:
                records.append(Record(name, "TXT", text, ttl))
    for key in labels:
        if key.startswith(LABEL_PREFIX + "srv."):
            port_text = key.removeprefix(LABEL_PREFIX + "srv.")
            if not port_text.isdigit() or all(p != int(port_text) for p, _ in exposed_ports(attrs)):
                problems.append(f"label {key}: no such exposed port")
    return records
