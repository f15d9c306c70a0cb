"""Names as text, and where they stand: the name helpers every stage uses.

``normalized`` (lower-case, absolute), ``in_zone`` (a zone's apex or below it), ``ancestors``
(a name up to the root), ``reverse_name`` (an address's PTR name) and back
(``reverse_address``).

Names as text without losing a label: a ``.`` or ``\\`` byte inside a label is escaped
(RFC 1035 5.1), so ``a\\.b.example.org.`` (labels ``a.b``, ``example``, ``org``) never
becomes the four-label ``a.b.example.org.`` on the way to the zone or an upstream, and never
reaches dnslib's IDNA encoder as an empty label (a ``UnicodeError``)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from dnslib import DNSLabel

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")  # dotted quad, canonical form


def normalized(name: str) -> str:
    """Lower-case and make absolute: ``Web.Docker`` -> ``web.docker.``."""
    name = name.strip().lower()
    return name if name.endswith(".") else name + "."


def in_zone(name: str, zone: str) -> bool:
    """``name`` is ``zone`` or below it (both absolute, lower-case; every name is below
    the root ``.``)."""
    return zone == "." or name == zone or name.endswith("." + zone)


def ancestors(name: str) -> Iterator[str]:
    """``a.b.docker.`` -> ``a.b.docker.``, ``b.docker.``, ``docker.``, ``.``."""
    while True:
        yield name
        if name == ".":
            return
        _, _, rest = name.partition(".")
        name = rest or "."


def reverse_name(address: str) -> str:
    """``10.0.0.1`` -> ``1.0.0.10.in-addr.arpa.``; ``ValueError`` for what is no address."""
    if IPV4.fullmatch(address):  # the common case without ipaddress (a store at 100k keys)
        a, b, c, d = address.split(".")
        return f"{d}.{c}.{b}.{a}.in-addr.arpa."
    return _reverse_name(address)


@lru_cache(maxsize=16384)  # bounded: hosts reloads with new addresses must not grow it
def _reverse_name(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer + "."


def address_key(address: str) -> str:
    """The text an address is known by (``reverse_address`` gives it back from the reverse
    name): a canonical dotted quad as it is, any other address in its canonical form."""
    if IPV4.fullmatch(address):
        return address
    return _canonical(address)


@lru_cache(maxsize=16384)
def _canonical(address: str) -> str:
    return str(ipaddress.ip_address(address))


def reverse_address(name: str) -> str | None:
    """``1.0.0.10.in-addr.arpa.`` -> ``10.0.0.1``, an ``ip6.arpa.`` name of 32 nibbles -> its
    address (``address_key``'s form); None for any other name."""
    if name.endswith(".in-addr.arpa."):
        labels = name[: -len(".in-addr.arpa.")].split(".")
        if len(labels) != 4:
            return None
        address = ".".join(reversed(labels))
        return address if IPV4.fullmatch(address) else None
    if name.endswith(".ip6.arpa."):
        nibbles = name[: -len(".ip6.arpa.")].split(".")
        if len(nibbles) != 32 or any(len(n) != 1 for n in nibbles):
            return None
        try:
            return str(ipaddress.IPv6Address(int("".join(reversed(nibbles)), 16)))
        except ValueError:
            return None
    return None


def text_of(label: Any) -> str:
    """A dnslib ``DNSLabel`` as dotted text, escaping ``.`` and ``\\`` inside labels."""
    parts = label.label
    if not any(b"." in part or b"\\" in part for part in parts):
        return str(label)  # the common case: dnslib's own text
    escaped = [
        part.decode("ascii", "backslashreplace").replace("\\", "\\\\").replace(".", "\\.")
        for part in parts
    ]
    return ".".join(escaped) + "."


def label_of(text: str) -> DNSLabel:
    """The labels of ``text_of``'s text (a name without escapes is dnslib's own reading)."""
    if "\\" not in text:
        return DNSLabel(text)
    labels: list[bytes] = []
    current = bytearray()
    chars = iter(text)
    for char in chars:
        if char == "\\":
            current += next(chars, "\\").encode("latin-1", "replace")
        elif char == ".":
            labels.append(bytes(current))
            current = bytearray()
        else:
            current += char.encode("latin-1", "replace")
    if current:
        labels.append(bytes(current))
    return DNSLabel([label for label in labels if label] if labels else [])
