"""One resource record as every layer holds it: its name, type, value and TTL (``Record``),
the structured values (``SrvValue``, ``MxValue``), how an SRV RRset's weights are answered
(``srv_weights``) and SkyDNS wildcard patterns (``wildcard_parts``).  Values only: no I/O, no
store (``dnsd.records`` holds them), no wire format.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

RECORD_TYPES = frozenset({"A", "AAAA", "CNAME", "PTR", "SRV", "TXT", "MX", "NS"})


class SrvValue(NamedTuple):
    priority: int
    weight: int
    port: int
    target: str
    # SkyDNS/CoreDNS semantics (etcd): the weight is a share; an answer holding such a record
    # gives every record of its priority its percentage of the total (``srv_weights``).
    shares: bool = False
    # DNS-SD (dns_sd.py): whether the SRV's name makes its instance label a browsable
    # instance (false for a container's group names, which point at the containers' own).
    listed: bool = True


class MxValue(NamedTuple):
    preference: int
    exchange: str


Value = str | tuple[str, ...] | SrvValue | MxValue


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record. ``name`` is absolute and lower-case (``web.docker.``)."""

    name: str
    rtype: str
    value: Value
    ttl: int
    # The network (CIDR) an address lives on: clients inside it get only such addresses.
    scope: str | None = None
    # Whether this A/AAAA record gives its address an automatic PTR back to ``name``.
    reverse: bool = True

    def __post_init__(self) -> None:
        if self.rtype not in RECORD_TYPES:
            raise ValueError(f"unsupported record type {self.rtype!r}")
        if not self.name.endswith(".") or self.name != self.name.lower():
            raise ValueError(f"record name must be absolute and lower-case: {self.name!r}")


def srv_weights(records: list[Record]) -> list[Record]:
    """One SRV RRset as answered: when any record's weight is a share (etcd), one record per
    (priority, port, target) and weights in percent of their priority's total, at least 1 for
    a weight above 0 (as CoreDNS).  Otherwise the records as they are (Docker, static)."""
    if not any(isinstance(r.value, SrvValue) and r.value.shares for r in records):
        return records
    best: dict[tuple[int, int, str], tuple[Record, SrvValue]] = {}
    for record in records:
        value = record.value
        assert isinstance(value, SrvValue)
        key = (value.priority, value.port, value.target)
        if key not in best or value.weight > best[key][1].weight:
            best[key] = (record, value)
    totals: dict[int, int] = {}
    for _, value in best.values():
        totals[value.priority] = totals.get(value.priority, 0) + value.weight
    answered = []
    for record, value in best.values():
        total = totals[value.priority]
        share = value.weight * 100 // total if total else 0
        share = max(share, 1) if value.weight else 0
        weighted = SrvValue(value.priority, share, value.port, value.target)
        answered.append(dataclasses.replace(record, value=weighted))
    return answered


WILDCARD_LABELS = ("*", "any")  # SkyDNS: a label that matches any one label


def wildcard_parts(pattern: str) -> tuple[list[str], str]:
    """``x1.*.region1.docker.`` -> (``["x1", "*"]``, ``region1.docker.``): the labels up to
    the last wildcard, and the fixed suffix below them (the subtree a wildcard answer reads).
    A name without a wildcard gives no labels and itself."""
    labels = pattern.rstrip(".").split(".")
    fixed = len(labels)
    while fixed > 0 and labels[fixed - 1] not in WILDCARD_LABELS:
        fixed -= 1
    suffix = labels[fixed:]
    return labels[:fixed], ".".join(suffix) + "." if suffix else "."
