"""DNS-SD (RFC 6763) browsing records, derived from the SRV records every source gives.

An SRV record at ``_<service>._<proto>.<instance>.<domain>`` (a container's, a static one, an
etcd key's, another host's) makes ``<instance>`` an instance of the service type
``_<service>._<proto>.<domain>``:

- ``_services._dns-sd._udp.<domain> PTR _<service>._<proto>.<domain>`` (the types present),
- ``_<service>._<proto>.<domain> PTR <instance>._<service>._<proto>.<domain>`` (the instances),
- ``<instance>._<service>._<proto>.<domain> SRV`` (the same priority, weight, port, target),
- and a TXT record at the SRV's name becomes the instance's TXT (the resolver answers one empty
  string when there is none, RFC 6763 6.1).

An SRV value with ``listed`` false (a container's group names: its compose service or
``dnsd.service`` name, which target the containers' own names) is not an instance of its own.
The record store indexes these records next to the ones they come from, so they come and go
with them (health, etcd leases, withdrawals) and answers are dropped from the caches as theirs
are.  Pure functions, no I/O.
"""

from __future__ import annotations

from dnsd.record import Record, SrvValue

PROTOCOLS = ("_tcp", "_udp")
SERVICES = "_services._dns-sd._udp."
# Browse domains (RFC 6763 11): "b" (browse) and "lb" (the legacy/default browse domain).
BROWSE_DOMAIN_LABELS = ("b", "lb")


def instance_parts(name: str) -> tuple[str, str, str] | None:
    """(instance label, service type, domain) of an SRV-shaped name, or None:
    ``_http._tcp.web.docker.`` -> ("web", "_http._tcp.docker.", "docker.")."""
    if not name.startswith("_"):
        return None
    service, _, rest = name.partition(".")
    proto, _, rest = rest.partition(".")
    instance, _, domain = rest.partition(".")
    if len(service) < 2 or proto not in PROTOCOLS or not instance or instance.startswith("_"):
        return None
    domain = domain or "."
    prefix = f"{service}.{proto}."
    return instance, prefix if domain == "." else prefix + domain, domain


def services_name(domain: str) -> str:
    return SERVICES if domain == "." else SERVICES + domain


def browse_domain_names(domain: str) -> tuple[str, ...]:
    """``b._dns-sd._udp.<domain>`` and ``lb._dns-sd._udp.<domain>``: each a PTR to the domain."""
    suffix = "_dns-sd._udp." + ("" if domain == "." else domain)
    return tuple(f"{label}.{suffix}" for label in BROWSE_DOMAIN_LABELS)


def is_instance_name(name: str) -> bool:
    """``web._http._tcp.docker.``: an instance label, then a service type."""
    _, _, service_type = name.partition(".")
    labels = service_type.split(".", 2)
    return (
        not name.startswith("_")
        and len(labels) == 3
        and len(labels[0]) > 1
        and labels[0].startswith("_")
        and labels[1] in PROTOCOLS
    )


def derived(record: Record) -> tuple[Record, ...]:
    """The browsing records ``record`` gives (none for most records: one string test)."""
    if record.name[0] != "_" or record.rtype not in ("SRV", "TXT"):
        return ()
    parts = instance_parts(record.name)
    if parts is None:
        return ()
    instance, service_type, domain = parts
    instance_name = f"{instance}.{service_type}"
    if record.rtype == "TXT":
        return (Record(instance_name, "TXT", record.value, record.ttl),)
    value = record.value
    if not isinstance(value, SrvValue) or not value.listed:
        return ()
    return (
        Record(services_name(domain), "PTR", service_type, record.ttl),
        Record(service_type, "PTR", instance_name, record.ttl),
        Record(instance_name, "SRV", value, record.ttl),
    )
