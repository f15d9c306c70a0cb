"""DNS rebinding protection (opt-in, as dnsmasq's ``--stop-dns-rebind``).

A web page on an outside name whose address later turns private (a home router, a cloud's
metadata service at 169.254.169.254, 127.0.0.1) lets a browser reach what only the inside
should.  With ``forward.stop_rebind`` on, a forwarded answer that holds an A/AAAA address
that is not globally routable (private, loopback, link-local, shared, unspecified, reserved,
IPv4-mapped) is refused as a whole, unless the name asked is under one of the allowed
domains (``forward.rebind_allowed``, and every domain that has its own upstreams).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from dnslib import QTYPE

from dnsd.names import in_zone


class RebindGuard:
    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allowed = tuple(allowed)

    def allows(self, qname: str, records: Iterable[Any]) -> bool:
        """Whether an upstream's answer records for ``qname`` may be passed on."""
        if any(in_zone(qname, domain) for domain in self.allowed):
            return True
        for rr in records:
            if rr.rtype in (QTYPE.A, QTYPE.AAAA) and not _is_global(str(rr.rdata)):
                return False
        return True


def _is_global(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return False  # ::ffff:10.0.0.1 reaches 10.0.0.1
    return address.is_global
