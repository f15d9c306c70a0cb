"""Names as text, and where they stand.

``in_zone``: whether a name is a zone's apex or below it, the one test every stage uses.

Names as text without losing a label: a ``.`` or ``\\`` byte inside a label is escaped
(RFC 1035 5.1), so ``a\\.b.example.org.`` (labels ``a.b``, ``example``, ``org``) never
becomes the four-label ``a.b.example.org.`` on the way to the zone or an upstream, and never
reaches dnslib's IDNA encoder as an empty label (a ``UnicodeError``)."""

from __future__ import annotations

from typing import Any

from dnslib import DNSLabel


def in_zone(name: str, zone: str) -> bool:
    """``name`` is ``zone`` or below it (both absolute, lower-case; every name is below
    the root ``.``)."""
    return zone == "." or name == zone or name.endswith("." + zone)


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
