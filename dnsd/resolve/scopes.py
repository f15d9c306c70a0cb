"""Network-aware answers: which of a name's networks (CIDR scopes) hold a client address.

A name whose addresses live on two or more networks is answered per asker: a client inside one
of them gets only the addresses on it.  A scope is a CIDR, optionally followed by the
network's gateway (``172.18.0.0/16 172.18.0.1``): the gateway is the host itself, and what
comes from it (the host, or a client NATed or proxied through a published port) is outside
every network, so it gets all the addresses, as a client on the host does.  What such an
answer depends on is therefore the set of those networks that hold the client (``scope_key``),
not the client's address, so the packed-answer cache keeps one copy per network instead of
one per client.
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


def scope_of(cidr: str, gateway: str = "") -> str:
    """A scope: the network, and its gateway when known."""
    return f"{cidr} {gateway}" if gateway else cidr


@lru_cache(maxsize=4096)
def _parsed(scope: str) -> tuple[Network, Address | None]:
    cidr, _, gateway = scope.partition(" ")
    return network(cidr), client_address(gateway) if gateway else None


def inside(client_ip: str, scope: str) -> bool:
    client = client_address(client_ip)
    if client is None:
        return False
    net, gateway = _parsed(scope)
    return client in net and client != gateway


def scope_key(client_ip: str, scopes: tuple[str, ...]) -> str:
    """The networks among ``scopes`` that hold ``client_ip``, as one string."""
    return ",".join(scope for scope in scopes if inside(client_ip, scope))
