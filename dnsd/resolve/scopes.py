"""Network-aware answers: which of a name's networks (CIDR scopes) hold a client address.

A name whose addresses live on two or more networks is answered per asker: a client inside one
of them gets only the addresses on it.  What such an answer depends on is therefore the set of
those networks that hold the client (``scope_key``), not the client's address, so the packed-
answer cache keeps one copy per network instead of one per client.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=4096)
def network(cidr: str) -> Network:
    return ipaddress.ip_network(cidr, strict=False)


@lru_cache(maxsize=4096)
def client_address(client_ip: str) -> Address | None:
    try:
        address = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def inside(client_ip: str, cidr: str) -> bool:
    client = client_address(client_ip)
    return client is not None and client in network(cidr)


def scope_key(client_ip: str, scopes: tuple[str, ...]) -> str:
    """The networks among ``scopes`` that hold ``client_ip``, as one string."""
    return ",".join(scope for scope in scopes if inside(client_ip, scope))
