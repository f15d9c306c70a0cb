"""The container label vocabulary: dnsd's own labels (``dnsd.*``), dnsdock's labels and
environment variables, how their values are read (flags, numbers, DNS-safe names, DNS-SD TXT
strings), and the well-known port names SRV records take.  Pure functions, no I/O."""

from __future__ import annotations

import re

from dnsd.protocol import MAX_LABEL_BYTES

LABEL_PREFIX = "dnsd."
DEFAULT_PRIORITY = 10
DEFAULT_WEIGHT = 10

# Port -> SRV service name (IANA service names) for the ports containers commonly expose.
WELL_KNOWN_PORTS = {
    21: "ftp", 22: "ssh", 25: "smtp", 53: "domain", 80: "http", 110: "pop3", 119: "nntp",
    123: "ntp", 143: "imap", 161: "snmp", 389: "ldap", 443: "https", 465: "submissions",
    514: "syslog", 587: "submission", 636: "ldaps", 873: "rsync", 993: "imaps", 995: "pop3s",
    1433: "ms-sql-s", 1883: "mqtt", 2181: "zookeeper", 2379: "etcd-client",
    2380: "etcd-server", 3306: "mysql", 3389: "ms-wbt-server", 4222: "nats", 5060: "sip",
    5222: "xmpp-client", 5432: "postgresql", 5671: "amqps", 5672: "amqp", 5984: "couchdb",
    6379: "redis", 6443: "sun-sr-https", 8883: "secure-mqtt", 9042: "cql", 9092: "kafka",
    9200: "elasticsearch", 11211: "memcache", 27017: "mongodb",
}  # fmt: skip

_INVALID = re.compile(r"[^a-z0-9_-]+")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


DNSDOCK_PREFIX = "com.dnsdock."
DNSDOCK_ALIAS = "com.dnsdock.alias"
# dnsdock setting -> its label and the environment variables that say the same (later wins).
DNSDOCK_SETTINGS = {
    "ignore": ("com.dnsdock.ignore", ("DNSDOCK_IGNORE", "SERVICE_IGNORE")),
    "alias": (DNSDOCK_ALIAS, ("DNSDOCK_ALIAS",)),
    "name": ("com.dnsdock.name", ("DNSDOCK_NAME",)),
    "tags": ("com.dnsdock.tags", ("SERVICE_TAGS",)),
    "image": ("com.dnsdock.image", ("DNSDOCK_IMAGE", "SERVICE_NAME")),
    "ttl": ("com.dnsdock.ttl", ("DNSDOCK_TTL",)),
    "region": ("com.dnsdock.region", ("SERVICE_REGION",)),
}
KNOWN_LABELS = frozenset(
    {"ignore", "ttl", "wildcard", "name", "service", "priority", "weight"}
)  # dnsd.<these>; dnsd.srv.<port> and dnsd.txt.<key> too


def unknown_labels(labels: dict[str, str]) -> list[str]:
    """``dnsd.*`` and ``com.dnsdock.*`` labels that mean nothing to dnsd (a typo, or a
    dnsdock setting dnsd does not take, such as ``com.dnsdock.ip_addr``)."""
    dnsdock = {label for label, _ in DNSDOCK_SETTINGS.values()}
    found = []
    for key in sorted(labels):
        if key.startswith(LABEL_PREFIX):
            rest = key.removeprefix(LABEL_PREFIX)
            if rest not in KNOWN_LABELS and not rest.startswith(("srv.", "txt.")):
                found.append(key)
        elif key.startswith(DNSDOCK_PREFIX) and key not in dnsdock:
            found.append(key)
    return found


def dnsdock_settings(labels: dict[str, str], env: list[str]) -> dict[str, str]:
    """dnsdock's settings of a container: its ``com.dnsdock.*`` labels, then its
    ``DNSDOCK_*``/``SERVICE_*`` environment variables over them (dnsdock's order)."""
    variables = dict(entry.partition("=")[::2] for entry in env if "=" in entry)
    found: dict[str, str] = {}
    for setting, (label, names) in DNSDOCK_SETTINGS.items():
        if label in labels:
            found[setting] = labels[label].strip()
        for name in names:
            if name in variables:
                found[setting] = variables[name].strip()
    return found


def image_label(image: str) -> str:
    """``registry:5000/team/nginx:1.25@sha256:...`` -> ``nginx``."""
    path = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return dns_label(path.split(":", 1)[0])


def dns_label(text: str) -> str:
    """A DNS-safe label: lower case, runs of other characters become '-', at most 63."""
    label = _INVALID.sub("-", text.strip().lower()).strip("-")
    return label[:MAX_LABEL_BYTES].rstrip("-")


def dns_name(text: str) -> str:
    """A relative multi-label name ("api.prod"), each label made DNS-safe; "" if unusable."""
    labels = [dns_label(part) for part in text.strip().strip(".").split(".")]
    return "" if not labels or not all(labels) else ".".join(labels)


def label_flag(labels: dict[str, str], key: str, problems: list[str]) -> bool:
    value = labels.get(key)
    if value is None:
        return False
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() not in _FALSE:
        problems.append(f"label {key}: not a boolean: {value!r}")
    return False


def label_number(
    labels: dict[str, str], key: str, default: int, top: int, problems: list[str]
) -> int:
    value = labels.get(key)
    if value is None:
        return default
    try:
        number = int(value.strip())
    except ValueError:
        number = -1
    if not 0 <= number <= top:
        problems.append(f"label {key}: not a number in 0..{top}: {value!r}")
        return default
    return number


def txt_problem(key: str, entry: str) -> str | None:
    """Why ``entry`` (``key=value``) cannot be a DNS-SD TXT string (RFC 6763 6.3: a printable
    ASCII key without ``=``, the whole at most 255 bytes), or None."""
    if not key or "=" in key or not all(" " <= c <= "~" for c in key):
        return "a TXT key must be printable ASCII without '='"
    if len(entry.encode()) > 255:
        return "'key=value' is longer than 255 bytes"
    return None


def txt_strings(labels: dict[str, str], problems: list[str]) -> tuple[str, ...] | None:
    """``dnsd.txt.<key>=<value>`` labels as DNS-SD TXT strings ``key=value`` (RFC 6763 6.3),
    sorted by key; None without any.  A key must be printable ASCII without ``=``, and each
    string at most 255 bytes: others are reported and left out."""
    prefix = LABEL_PREFIX + "txt."
    strings = []
    for key in sorted(k for k in labels if k.startswith(prefix)):
        name = key.removeprefix(prefix)
        entry = f"{name}={labels[key]}"
        problem = txt_problem(name, entry)
        if problem is not None:
            problems.append(f"label {key}: {problem}")
        else:
            strings.append(entry)
    return tuple(strings) if strings else None
