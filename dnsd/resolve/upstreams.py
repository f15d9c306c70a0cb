"""Which upstreams there are: ``Upstream`` (plain DNS ``ADDR[:PORT]`` or DNS-over-TLS
``tls://ADDR[:PORT][#name]``), parsed from the settings, or the nameservers of a resolv.conf
that are not dnsd itself.  No I/O but the caller's reading of the file.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from dnsd.hostport import format_hostport, parse_hostport
from dnsd.protocol import MAX_LABEL_BYTES

DOT_PORT = 853


@dataclass(frozen=True, slots=True)
class Upstream:
    host: str
    port: int = 53
    tls_name: str = ""  # DNS-over-TLS when set: the name its certificate must carry

    def __str__(self) -> str:
        address = format_hostport(self.host, self.port)
        return f"tls://{address}#{self.tls_name}" if self.tls_name else address


def parse_upstream(entry: str) -> Upstream:
    """``ADDR[:PORT]`` (plain DNS, port 53) or ``tls://ADDR[:PORT][#name]`` (DoT, port 853);
    raises ValueError."""

    entry = entry.strip()
    if not entry.startswith("tls://"):
        return Upstream(*parse_hostport(entry, 53))
    address, _, name = entry.removeprefix("tls://").partition("#")
    host, port = parse_hostport(address, DOT_PORT)
    name = name.strip().rstrip(".")
    if name and not all(label and len(label) <= MAX_LABEL_BYTES for label in name.split(".")):
        raise ValueError(f"not a TLS server name: {name!r}")
    return Upstream(host, port, name or host)


def parse_upstreams(entries: list[str]) -> list[Upstream]:
    return [parse_upstream(entry) for entry in entries]


def resolv_conf_upstreams(text: str, own: set[tuple[str, int]]) -> list[Upstream]:
    """``nameserver`` lines of a resolv.conf, minus dnsd's own listen addresses (a listen on
    0.0.0.0 or :: owns every loopback address on its port)."""
    wildcard_ports = {port for host, port in own if host in ("0.0.0.0", "::")}
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            upstream = Upstream(fields[1].split("%", 1)[0], 53)
            if (upstream.host, upstream.port) in own:
                continue
            if upstream.port in wildcard_ports and _is_loopback(upstream.host):
                continue
            found.append(upstream)
    return found


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
