"""Which records may enter the record store: DNS limits and zone confinement.

Every source's records pass here on their way into the store (``RecordStore`` calls
``Admission.problem``).  A record is refused when its name or value breaks a DNS limit (a label
over 63 bytes, a name over 255 bytes on the wire, characters outside letters, digits, ``-`` and
``_``, ``*`` other than as a whole label, TXT strings over 255 bytes or a TXT record over
``MAX_TXT_BYTES``), or when its name lies outside the configured zones.  PTR records may also
live in the reverse trees (``in-addr.arpa.``, ``ip6.arpa.``) when they point into a zone.  Only
sources named in ``outside_sources`` (the operator's static zone, with its opt-in key) may
publish other names.  Knows nothing about who the sources are or how records are stored.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from dnsd.protocol import MAX_LABEL_BYTES, MAX_NAME_WIRE_BYTES
from dnsd.record import MxValue, Record, SrvValue

MAX_TXT_STRING_BYTES = 255
MAX_TXT_BYTES = 4000  # one record's strings together: fits a TCP answer many times over
REVERSE_ZONES = ("in-addr.arpa.", "ip6.arpa.")
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")

OUTSIDE_ZONES = "outside the zones"


@lru_cache(maxsize=16384)  # bounded: hosts reloads with new addresses must not grow it
def name_problem(name: str) -> str | None:
    """Why ``name`` (absolute, lower-case) cannot be served, or None."""
    if name == ".":
        return None
    if not name.endswith("."):
        return f"not an absolute name: {name!r}"
    labels = name[:-1].split(".")
    if sum(len(label.encode()) + 1 for label in labels) + 1 > MAX_NAME_WIRE_BYTES:
        return "name longer than 255 bytes"
    for label in labels:
        if not label:
            return "empty label"
        if len(label.encode()) > MAX_LABEL_BYTES:
            return f"label longer than 63 bytes: {label[:20]!r}..."
        if label != "*" and not set(label) <= _LABEL_CHARS:
            return f"label with characters outside a-z 0-9 - _: {label[:63]!r}"
    return None


def value_problem(record: Record) -> str | None:
    """Why ``record``'s value cannot be served (a bad target name, oversized TXT), or None."""
    value = record.value
    if isinstance(value, SrvValue):
        return _target_problem(value.target)
    if isinstance(value, MxValue):
        return _target_problem(value.exchange)
    if record.rtype in ("CNAME", "PTR", "NS"):
        return _target_problem(str(value))
    if record.rtype == "TXT":
        parts = value if isinstance(value, tuple) else (str(value),)
        sizes = [len(str(part).encode()) for part in parts]
        if any(size > MAX_TXT_STRING_BYTES for size in sizes):
            return "TXT string longer than 255 bytes"
        if sum(sizes) > MAX_TXT_BYTES:
            return f"TXT record longer than {MAX_TXT_BYTES} bytes"
    return None


def _target_problem(target: str) -> str | None:
    problem = name_problem(target)
    return None if problem is None else f"target {problem}"


class Admission:
    def __init__(self, zones: Iterable[str], outside_sources: Iterable[str] = ()) -> None:
        self.zones = tuple(zones)
        self.outside_sources = frozenset(outside_sources)
        # (zone, "." + zone) in order; the root matches every name (its suffix is "").
        self._suffixes = tuple((zone, "" if zone == "." else "." + zone) for zone in self.zones)

    def zone_of(self, name: str) -> str | None:
        for zone, suffix in self._suffixes:  # a plain loop: every record of a change asks
            if name.endswith(suffix) or name == zone:
                return zone
        return None

    def problem(self, source: str, record: Record) -> str | None:
        """Why ``source`` may not publish ``record``, or None."""
        problem = name_problem(record.name) or value_problem(record)
        if problem is not None or source in self.outside_sources:
            return problem
        if self.zone_of(record.name) is not None:
            return None
        if record.rtype == "PTR" and record.name.endswith(REVERSE_ZONES):
            if self.zone_of(str(record.value)) is not None:
                return None
            return "PTR pointing outside the zones"
        return OUTSIDE_ZONES

    def reverses(self, record: Record) -> bool:
        """Whether an address record may give its address an automatic PTR: only names under
        a zone do (an opted-in static name outside the zones does not)."""
        wildcard = record.name.startswith("*.")  # ``*.dev.docker`` is no PTR target
        return record.reverse and not wildcard and self.zone_of(record.name) is not None
