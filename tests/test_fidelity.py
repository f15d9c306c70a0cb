"""SkyDNS / CoreDNS-etcd fidelity: the case set in tests/data/skydns_cases.toml, written from
those projects' public tests, answered by a dnsd mirroring a real etcd.

Every case must match the original answer, or be a documented deliberate difference: then the
case's ``dnsd`` table says what dnsd answers and ``why`` names the section of docs/etcd.md.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
from conftest import ROOT, FakeUpstream, query, start_dnsd
from testbed.etcd import Etcd

from dnsd.sources.skydns import name_to_key

CASES = tomllib.loads((ROOT / "tests/data/skydns_cases.toml").read_text())
SUITES: list[dict[str, Any]] = CASES["suite"]
ETCD_DOC = (ROOT / "docs/etcd.md").read_text()

Row = tuple[str, str, str, str]  # owner, TTL ("" when not compared), type, rdata


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.lower()).strip().replace(" ", "-")


DOC_SECTIONS = {_slug(line.lstrip("#")) for line in ETCD_DOC.splitlines() if line.startswith("#")}


def _in_zones(owner: str, zones: list[str]) -> bool:
    owner = owner.lower()
    return any(owner == z or owner.endswith("." + z) for z in zones)


def _row(owner: str, ttl: int, rtype: str, rdata: str, zones: list[str], section: str) -> Row:
    if rtype == "SOA":  # serials and timers differ by design: owner, mname and rname count
        rdata = " ".join(rdata.split()[:2])
    keep_case = section == "answer"  # the owner's spelling is echoed in the answer only
    owner = owner if keep_case else owner.lower()
    compared = section == "answer" and rtype != "SOA" and _in_zones(owner, zones)
    checked_ttl = str(ttl) if compared else ""
    return owner, checked_ttl, rtype, rdata.lower() if rtype != "TXT" else rdata


def expected_rows(lines: list[str], zones: list[str], section: str) -> list[Row]:
    rows = []
    for line in lines:
        owner, ttl, rtype, text = line.split(None, 3)
        rdata = dns.rdata.from_text(dns.rdataclass.IN, rtype, text).to_text()
        rows.append(_row(owner, int(ttl), rtype, rdata, zones, section))
    return sorted(rows)


def reply_rows(reply: dns.message.Message, zones: list[str], section: str) -> list[Row]:
    rrsets = getattr(reply, section)
    return sorted(
        _row(rrset.name.to_text(), rrset.ttl, dns.rdatatype.to_text(rrset.rdtype),
             rdata.to_text(), zones, section)
        for rrset in rrsets
        for rdata in rrset
    )  # fmt: skip


def ask(port: int, qname: str, qtype: str) -> dns.message.Message:
    reply = query(port, qname, qtype, use_edns=0)
    if reply.flags & dns.flags.TC:
        reply = query(port, qname, qtype, use_edns=0, tcp=True)
    return reply


def _cases() -> Iterator[Any]:
    for number, suite in enumerate(SUITES):
        for case in suite["case"]:
            label = f"{suite['name'].split()[-1]}:{case['qname']}/{case['qtype']}"
            yield pytest.param(number, case, id=label)


def test_every_deliberate_difference_is_documented() -> None:
    reasons = {case["dnsd"]["why"] for s in SUITES for case in s["case"] if "dnsd" in case}
    assert reasons, "the case set lists its deliberate differences"
    assert reasons <= DOC_SECTIONS, f"not a section of docs/etcd.md: {reasons - DOC_SECTIONS}"


@pytest.fixture(scope="module")
def servers(etcd: Etcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, int]]:
    """One dnsd per suite, each mirroring the suite's keys under its own prefix."""
    upstream = FakeUpstream().start()
    started, ports = [], {}
    for number, suite in enumerate(SUITES):
        prefix = f"/fidelity{number}"
        for name, value, *lease in suite["services"]:
            if lease:  # [name, value, lease TTL]: the key hangs on a lease of that TTL
                granted = etcd.ctl("lease", "grant", str(lease[0])).stdout.split()[1]
                etcd.ctl("put", name_to_key(name, prefix), value, "--lease", granted)
            else:
                etcd.put(name_to_key(name, prefix), value)
        zones = ", ".join(f'"{z}"' for z in suite["zones"])
        config = (
            f"[server]\nzones = [{zones}]\nttl = {suite['ttl']}\n"
            f'[forward]\nupstreams = ["127.0.0.1:{upstream.port}"]\n'
            f'[etcd]\nenabled = true\nendpoints = ["{etcd.endpoints}"]\nprefix = "{prefix}"\n'
        )
        server = start_dnsd(tmp_path_factory.mktemp(f"suite{number}"), config=config)
        started.append(server)
        server.wait_source("etcd")
        ports[number] = server.port
    yield ports
    for server in started:
        server.stop()
    upstream.stop()


@pytest.mark.parametrize(("suite_number", "case"), list(_cases()))
def test_case(servers: dict[int, int], suite_number: int, case: dict[str, Any]) -> None:
    suite = SUITES[suite_number]
    zones = suite["zones"]
    want = case
    if "dnsd" in case:  # a deliberate difference replaces the sections it names, wholesale
        want = {k: case["dnsd"].get(k, [] if k != "rcode" else "NOERROR")
                for k in ("rcode", "answer", "authority", "additional")}  # fmt: skip
    reply = ask(servers[suite_number], case["qname"], case["qtype"])
    got = {
        "rcode": dns.rcode.to_text(reply.rcode()),
        "answer": reply_rows(reply, zones, "answer"),
        "authority": reply_rows(reply, zones, "authority"),
        "additional": reply_rows(reply, zones, "additional"),
    }
    expected = {
        "rcode": want.get("rcode", "NOERROR"),
        "answer": expected_rows(want.get("answer", []), zones, "answer"),
        "authority": expected_rows(want.get("authority", []), zones, "authority"),
        "additional": expected_rows(want.get("additional", []), zones, "additional"),
    }
    assert got == expected
