"""``dnsd register`` and ``dnsd deregister``: names for what is not a container.

``register`` writes a name's address (and, with a port, its SRV record) to etcd in the form
dnsd publishes containers in, under a lease of its own that it keeps alive until it ends, so
every dnsd sharing the etcd prefix answers for a VM, a database on a host or a service on
another machine as it answers for a container.  The keys' instance label is
``<node>-r<digest of name and address>``: stable across runs, never mistaken for a
container's (``<node>-<container id>``).  ``deregister`` revokes the registrations' leases
(a running ``register`` then ends) and deletes their keys.

Before it says "registered", ``register`` checks its keys exactly as every dnsd's mirror
will (the mirror's own parser and admission: a scoped address, a misplaced ``*``, a node id
that makes the key's labels too long are refused with the mirror's reason), refuses a
wildcard name unless asked (``--wildcard``), and refuses a name a container publishes (from
any node): a registration never adds an address to a container's name.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dnsd.admission import Admission, name_problem
from dnsd.config import Config
from dnsd.errors import DnsdError
from dnsd.protocol import MAX_TTL
from dnsd.record import Record, SrvValue
from dnsd.records import RecordStore
from dnsd.sources.docker_labels import (
    DEFAULT_PRIORITY,
    DEFAULT_WEIGHT,
    WELL_KNOWN_PORTS,
    dns_label,
    txt_problem,
)
from dnsd.sources.etcd_client import make_client
from dnsd.sources.etcd_mirror import Mirror
from dnsd.sources.etcd_publish import Publisher, PublishSettings, container_label, desired_keys
from dnsd.sources.skydns import NODE_FIELD, name_to_key
from dnsd.stats import Stats

logger = logging.getLogger(__name__)

REGISTRATION_LABEL = re.compile(r".+-r[0-9a-f]{11}")
CONTAINER_LABEL = container_label()  # any node's container keys
JOIN_S = 5.0


class RegistrationError(DnsdError, ValueError):
    """A registration that cannot be written (the message says why)."""


@dataclass
class Registration:
    """One registered name, in the shape the publisher takes (``LocalService``)."""

    name: str
    address: str
    served: list[Record]
    withheld: str | None = None
    local_names: set[str] = field(default_factory=set)
    published: dict[tuple[int, str], int] = field(default_factory=dict)

    @property
    def instance(self) -> str:
        """Stands in for a container ID in the instance label (12 characters, not hex)."""
        return "r" + digest(self.name, self.address)


def digest(name: str, address: str) -> str:
    return hashlib.sha1(f"{name} {address}".encode()).hexdigest()[:11]


def absolute_name(name: str, zones: list[str]) -> str:
    """``db`` -> ``db.<first zone>``, ``db.docker`` -> ``db.docker.`` when inside a zone; an
    absolute name (``db.prod.example.``) as written, at least two labels."""
    text = name.strip().lower()
    if not text.endswith("."):
        inside = any(text == z.rstrip(".") or text.endswith("." + z.rstrip(".")) for z in zones)
        text = f"{text}." if inside else f"{text}.{zones[0]}"
    problem = name_problem(text)
    if problem:
        raise RegistrationError(f"{name!r}: {problem}")
    if text.count(".") < 2:
        raise RegistrationError(f"{text}: a top-level name; register a name inside a zone")
    return text


def outside_zones(name: str, zones: list[str]) -> bool:
    return not any(name.endswith("." + z) for z in zones if z != ".")


def registration(
    config: Config,
    name: str,
    address: str,
    port: int = 0,
    service: str = "",
    proto: str = "tcp",
    ttl: int | None = None,
    wildcard: bool = False,
    txt: list[str] | None = None,
) -> Registration:
    """The records ``register`` publishes, checked as every dnsd's mirror will check them;
    raises RegistrationError.  ``wildcard``: a ``*`` label is meant (it answers every
    name below that does not exist)."""
    fqdn = absolute_name(name, config.server.zones)
    if "*" in fqdn.split(".") and not wildcard:
        raise RegistrationError(
            f"{fqdn}: a wildcard answers every name below it that does not exist (an "
            "NXDOMAIN becomes this address); add --wildcard if that is meant"
        )
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise RegistrationError(
            f"{address!r}: not an IP address (only addresses are registered; a name that "
            "points elsewhere is a CNAME: write it to etcd or the static zone)"
        ) from None
    ttl = config.server.ttl if ttl is None else ttl
    if not 0 <= ttl <= MAX_TTL:
        raise RegistrationError(f"--ttl {ttl}: must be between 0 and 2147483647")
    rtype = "A" if ip.version == 4 else "AAAA"
    served = [Record(fqdn, rtype, ip.compressed, ttl)]
    if service and not port:
        raise RegistrationError("--service needs --port")
    if txt and not port:
        raise RegistrationError("--txt needs --port (TXT data describes a service)")
    strings = tuple(_txt_string(entry) for entry in txt or [])
    if port:
        if not 1 <= port <= 65535:
            raise RegistrationError(f"--port {port}: must be between 1 and 65535")
        label = dns_label((service or WELL_KNOWN_PORTS.get(port, str(port))).removeprefix("_"))
        if not label:
            raise RegistrationError(f"--service {service!r}: not a usable service name")
        srv = SrvValue(DEFAULT_PRIORITY, DEFAULT_WEIGHT, port, fqdn)
        served.append(Record(f"_{label}._{proto}.{fqdn}", "SRV", srv, ttl))
        if strings:
            served.append(Record(f"_{label}._{proto}.{fqdn}", "TXT", tuple(sorted(strings)), ttl))
    entry = Registration(fqdn, ip.compressed, served)
    mirrored_problem(config, entry)
    return entry


def _txt_string(entry: str) -> str:
    """``--txt KEY=VALUE`` as a DNS-SD TXT string (RFC 6763 6.3: a printable ASCII key
    without '=', the whole at most 255 bytes)."""
    key, sep, _ = entry.partition("=")
    problem = txt_problem(key, entry) if sep else "not KEY=VALUE"
    if problem is not None:
        raise RegistrationError(f"--txt {entry[:40]!r}: {problem}")
    return entry


def mirrored_problem(config: Config, entry: Registration) -> None:
    """Raise RegistrationError when a dnsd's mirror would skip or refuse any key of
    ``entry``: the keys are fed to a mirror of their own, as every server will read them."""
    etcd, zones = config.etcd, config.server.zones
    settings = PublishSettings(node_id=etcd.node_id, lease_ttl=etcd.lease_ttl)
    keys = desired_keys({entry.instance: entry}, settings, etcd.prefix)
    store = RecordStore(Admission(zones, outside_sources=("etcd",)))
    mirror = Mirror(store, etcd.prefix, zones, config.server.ttl)
    quiet = logging.getLogger(Mirror.__module__)
    was, quiet.disabled = quiet.disabled, True  # its "key skipped" line is our error below
    try:
        mirror.apply([(key, value, etcd.lease_ttl) for key, value in keys.items()])
    finally:
        quiet.disabled = was
    for key, why in mirror.bad_keys.items():
        raise RegistrationError(f"every dnsd would skip the key {key}: {why}")
    for (_, why), _count in store.rejections.items():
        raise RegistrationError(f"every dnsd would refuse {entry.name}: {why}")


def register(
    config: Config,
    entry: Registration,
    stop: threading.Event,
    announce: Callable[[str], None],
    client_factory: Callable[[], Any] | None = None,
) -> bool:
    """Publish ``entry`` until ``stop`` is set (then withdraw it) or it is deregistered.
    Returns True when it was deregistered."""
    etcd = config.etcd
    settings = PublishSettings(node_id=etcd.node_id, lease_ttl=etcd.lease_ttl)
    factory = client_factory or (lambda: make_client(etcd.connection()))
    client = factory()
    try:
        holder = container_holding(client, entry.name, etcd.prefix)
    finally:
        client.close()
    if holder:
        raise RegistrationError(
            f"{entry.name} is a container's name ({holder}): a registration would add "
            f"{entry.address} to its answers; register another name"
        )
    publisher = Publisher(
        factory,
        etcd.prefix,
        settings,
        Stats(),
        remove_earlier_run=False,
        end_when_revoked=True,
        announce=False,
    )
    publisher.update({entry.instance: entry})
    publisher.start()
    announced = False
    try:
        while not stop.wait(0.1):
            if publisher.synced and not announced:
                announced = True
                names = ", ".join(f"{r.name} {r.rtype}" for r in entry.served)
                announce(f"registered {names} as node {etcd.node_id}; stop to withdraw")
            if publisher.revoked:
                announce(f"{entry.name} was deregistered")
                return True
    finally:
        publisher.stop()
        publisher.join(JOIN_S)
    return False


def container_holding(client: Any, fqdn: str, prefix: str) -> str:
    """The key of a container's address at ``fqdn`` (published by any node), or ""."""
    base = name_to_key(fqdn, prefix) + "/"
    for value, meta in client.get_prefix(base):
        label = meta.key.decode(errors="replace")[len(base) :]
        if "/" in label or not CONTAINER_LABEL.fullmatch(label):
            continue
        with contextlib.suppress(ValueError, AttributeError):
            if json.loads(value).get(NODE_FIELD):
                return meta.key.decode(errors="replace")
    return ""


def deregister(
    config: Config, name: str, address: str | None, client_factory: Callable[[], Any] | None = None
) -> int:
    """Revoke and delete the registrations of ``name`` (of ``address`` only, if given), from
    any node; returns how many keys went."""
    fqdn = absolute_name(name, config.server.zones)
    base = name_to_key(fqdn, config.etcd.prefix) + "/"
    wanted = f"-r{digest(fqdn, ipaddress.ip_address(address).compressed)}" if address else ""
    client = (client_factory or (lambda: make_client(config.etcd.connection())))()
    try:
        keys: list[bytes] = []
        leases: set[int] = set()
        for _, meta in client.get_prefix(base):
            parts = meta.key.decode(errors="replace")[len(base) :].split("/")
            srv = len(parts) == 3 and parts[0].startswith("_") and parts[1].startswith("_")
            label = parts[-1]
            mine = REGISTRATION_LABEL.fullmatch(label) and label.endswith(wanted)
            if (len(parts) == 1 or srv) and mine:
                keys.append(meta.key)
                if meta.lease_id:
                    leases.add(meta.lease_id)
        for lease in sorted(leases):  # a running register ends; its keys go with it
            with contextlib.suppress(Exception):  # gone already: its keys are, too
                client.revoke_lease(lease)
        for key in keys:
            client.delete(key)
        return len(keys)
    finally:
        client.close()
