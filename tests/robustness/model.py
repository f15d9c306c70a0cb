"""A model of dnsd's answers: what a name in the test zone answers, given what the sources hold.

The writers of the robustness runs change names from a small vocabulary (``Value``): an
address, a text, a CNAME to a leaf name inside the zone or to a name outside it (answered by a
scripted upstream), or nothing.  ``expected`` says what dnsd answers for a name and a type in
a given state, in the form the readers record (``Reply``): rcode and the answer section as
(type, data, TTL or None) triples, sorted.  TTLs are compared for records inside the zones
(they are the source's) when the whole chain stays inside them; a chain that leaves them is
cached as a forwarded answer, whose TTLs all count down, so its rows carry ``None``.

The same model serves the property tests (tests/test_model.py: the local zone against it)
and the history checker (``tests/robustness/history.py``).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ZONE = "docker."
OUTSIDE = "example.com."

NOERROR, NXDOMAIN = "NOERROR", "NXDOMAIN"
TYPES = ("A", "AAAA", "TXT")
TTLS = (5, 30, 300)


@dataclass(frozen=True)
class Value:
    """What one name holds: ``rtype`` A, AAAA, TXT or CNAME, its data and TTL."""

    rtype: str
    data: str
    ttl: int


Row = tuple[str, str, int | None]  # (type, data, TTL; None: not compared)


@dataclass(frozen=True)
class Reply:
    rcode: str
    answer: tuple[Row, ...]

    @staticmethod
    def of(rcode: str, rows: list[Row]) -> Reply:
        return Reply(rcode, tuple(sorted(rows, key=lambda r: (r[0], r[1], r[2] or 0))))


def upstream_address(name: str) -> str:
    """The address the scripted upstream answers for an outside name ``xN.example.com.``."""
    number = int(name.split(".", 1)[0][1:])
    return f"198.51.100.{number % 250 + 1}"


def upstream_zone_lines(names: list[str], ttl: int = 300) -> dict[str, str]:
    """FakeUpstream.scripted for the outside names: an A record each."""
    return {name: f"{name} {ttl} IN A {upstream_address(name)}" for name in names}


def expected(state: Mapping[str, Value], name: str, qtype: str) -> Reply:
    """dnsd's answer to ``name`` ``qtype`` when the zone holds ``state`` (name -> value;
    names absent from it do not exist).  CNAME chains end at a leaf inside the zone or at an
    outside name the upstream answers (an A record, nothing for other types)."""
    rows: list[Row] = []
    seen: set[str] = set()
    while True:
        value = state.get(name)
        if value is None:
            if name.endswith(ZONE):
                return Reply.of(NXDOMAIN, rows)
            rows = [(rtype, data, None) for rtype, data, _ in rows]  # a forwarded answer
            # Outside the zone: the scripted upstream's answer (its A record, whatever the
            # type asked: a test upstream's simplification dnsd passes on as it is).
            rows.append(("A", upstream_address(name), None))
            return Reply.of(NOERROR, rows)
        if value.rtype == qtype:
            rows.append((value.rtype, value.data, value.ttl))
            return Reply.of(NOERROR, rows)
        if value.rtype != "CNAME" or name in seen:
            return Reply.of(NOERROR, rows)  # NODATA
        seen.add(name)
        rows.append(("CNAME", value.data, value.ttl))
        name = value.data


def random_value(
    rng: random.Random, name: str, leaves: Sequence[str], outside: Sequence[str]
) -> Value | None:
    """What a writer sets ``name`` to next: a leaf (in ``leaves``) holds an address or
    nothing; any other name an address, a text, a CNAME to a leaf or outside, or nothing."""
    pick = rng.random()
    ttl = rng.choice(TTLS)
    if name in leaves:
        return None if pick < 0.3 else Value("A", f"10.78.0.{rng.randrange(1, 255)}", ttl)
    if pick < 0.15:
        return None
    if pick < 0.4:
        return Value("A", f"10.77.{rng.randrange(256)}.{rng.randrange(1, 255)}", ttl)
    if pick < 0.5:
        address = ipaddress.ip_address(f"fd00::77:{rng.randrange(1, 65535):x}")
        return Value("AAAA", str(address), ttl)
    if pick < 0.6:
        return Value("TXT", f"v{rng.randrange(10_000)}", ttl)
    if pick < 0.8:
        return Value("CNAME", rng.choice(leaves), ttl)
    return Value("CNAME", rng.choice(outside), ttl)
