"""Table-driven unit tests of the resolver layer: the chain (local zone -> forwarding cache), the
forwarding cache with a fake clock, and the ACL.  No sockets, no sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest
from dnslib import QTYPE, RR, SOA, A

from dnsd.protocol import RCODE_NOERROR, RCODE_NXDOMAIN, RCODE_REFUSED, RCODE_SERVFAIL
from dnsd.record import MxValue, Record, SrvValue
from dnsd.records import RecordStore
from dnsd.resolve.acl import Acl
from dnsd.resolve.answer import Answer
from dnsd.resolve.cache import ForwardCache
from dnsd.resolve.chain import ResolverChain, standard_chain
from dnsd.resolve.local import LocalZone
from dnsd.stats import Stats


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedUpstream:
    """The forwarder's place: answers from a table, counting questions."""

    def __init__(self, answers: dict[str, Answer]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(self, qname: str, qtype: int, qclass: int) -> Answer:
        self.asked.append(qname)
        await asyncio.sleep(0)
        found = self.answers.get(qname)
        return found if found is not None else Answer(RCODE_SERVFAIL, recursive=True)


def _a(name: str, address: str, ttl: int) -> RR:
    return RR(name, QTYPE.A, ttl=ttl, rdata=A(address))


def _nx(zone: str, ttl: int, minimum: int) -> Answer:
    soa = RR(zone, QTYPE.SOA, ttl=ttl, rdata=SOA("ns.", "admin.", (1, 60, 60, 60, minimum)))
    return Answer(RCODE_NXDOMAIN, authority=[soa], recursive=True)


UPSTREAM = {
    "www.example.": Answer(RCODE_NOERROR, rrsets=[[_a("www.example.", "1.2.3.4", 300)]]),
    "out.example.": Answer(RCODE_NOERROR, rrsets=[[_a("out.example.", "5.6.7.8", 60)]]),
    "nx.example.": _nx("example.", 600, 30),
}

STORE = [
    Record("web.docker.", "A", "10.0.0.1", 5),
    Record("web.docker.", "AAAA", "fd00::1", 5),
    Record("alias.docker.", "CNAME", "web.docker.", 5),
    Record("away.docker.", "CNAME", "out.example.", 5),
    Record("_http._tcp.web.docker.", "SRV", SrvValue(10, 10, 80, "web.docker."), 5),
    Record("docker.", "MX", MxValue(10, "web.docker."), 5),
    Record("txt.docker.", "TXT", ("hello",), 5),
    Record("x.deep.docker.", "A", "10.0.0.9", 5),
]

LOCAL, INSIDE, OUTSIDE = "127.0.0.1", "10.1.2.3", "203.0.113.9"


def _chain() -> tuple[ResolverChain, ScriptedUpstream]:
    store = RecordStore()
    store.replace_owner("static", "config", STORE)
    upstream = ScriptedUpstream(UPSTREAM)
    cache = ForwardCache(upstream, Stats(), clock=FakeClock())
    acl = Acl(["127.0.0.0/8", "10.0.0.0/8"])
    return standard_chain(LocalZone(store, ["docker."]), cache, acl), upstream


def _run(result: Answer | Awaitable[Answer]) -> Answer:
    if isinstance(result, Answer):
        return result
    return asyncio.run(_await(result))


async def _await(result: Awaitable[Answer]) -> Answer:
    return await result


def _texts(rrs: list[RR]) -> list[str]:
    return sorted(f"{rr.rname} {QTYPE[rr.rtype]} {rr.rdata}" for rr in rrs)


@pytest.mark.parametrize(
    ("qname", "qtype", "client", "rcode", "answer", "authority", "additional"),
    [
        ("web.docker.", "A", OUTSIDE, RCODE_NOERROR, ["web.docker. A 10.0.0.1"], [], []),
        ("web.docker.", "AAAA", LOCAL, RCODE_NOERROR, ["web.docker. AAAA fd00::1"], [], []),
        ("web.docker.", "TXT", LOCAL, RCODE_NOERROR, [], ["SOA"], []),  # NODATA
        ("nope.docker.", "A", LOCAL, RCODE_NXDOMAIN, [], ["SOA"], []),
        ("deep.docker.", "A", LOCAL, RCODE_NOERROR, [], ["SOA"], []),  # empty non-terminal
        ("alias.docker.", "A", OUTSIDE, RCODE_NOERROR,
         ["alias.docker. CNAME web.docker.", "web.docker. A 10.0.0.1"], [], []),
        ("_http._tcp.web.docker.", "SRV", LOCAL, RCODE_NOERROR,
         ["_http._tcp.web.docker. SRV 10 10 80 web.docker."], [],
         ["web.docker. A 10.0.0.1", "web.docker. AAAA fd00::1"]),
        ("docker.", "MX", LOCAL, RCODE_NOERROR, ["docker. MX 10 web.docker."], [],
         ["web.docker. A 10.0.0.1", "web.docker. AAAA fd00::1"]),
        ("txt.docker.", "TXT", LOCAL, RCODE_NOERROR, ['txt.docker. TXT "hello"'], [], []),
        ("docker.", "SOA", OUTSIDE, RCODE_NOERROR, ["SOA"], [], []),
        ("1.0.0.10.in-addr.arpa.", "PTR", OUTSIDE, RCODE_NOERROR,
         ["1.0.0.10.in-addr.arpa. PTR web.docker."], [], []),
        # Outside the zones: forwarded for clients allowed to recurse, refused for others.
        ("www.example.", "A", LOCAL, RCODE_NOERROR, ["www.example. A 1.2.3.4"], [], []),
        ("www.example.", "A", INSIDE, RCODE_NOERROR, ["www.example. A 1.2.3.4"], [], []),
        ("www.example.", "A", OUTSIDE, RCODE_REFUSED, [], [], []),
        ("nx.example.", "A", LOCAL, RCODE_NXDOMAIN, [], ["SOA"], []),
        ("broken.example.", "A", LOCAL, RCODE_SERVFAIL, [], [], []),
        # A local CNAME leaving the zones: completed upstream for allowed clients only.
        ("away.docker.", "A", LOCAL, RCODE_NOERROR,
         ["away.docker. CNAME out.example.", "out.example. A 5.6.7.8"], [], []),
        ("away.docker.", "A", OUTSIDE, RCODE_NOERROR, ["away.docker. CNAME out.example."], [],
         []),
    ],
)  # fmt: skip
def test_chain(
    qname: str,
    qtype: str,
    client: str,
    rcode: int,
    answer: list[str],
    authority: list[str],
    additional: list[str],
) -> None:
    chain, _ = _chain()
    got = _run(chain.resolve(qname, getattr(QTYPE, qtype), 1, qname, client))
    assert got.rcode == rcode
    rrs = [rr for rrset in got.rrsets for rr in rrset]
    if answer == ["SOA"]:
        assert [QTYPE[rr.rtype] for rr in rrs] == ["SOA"]
    else:
        assert _texts(rrs) == sorted(answer)
    assert [QTYPE[rr.rtype] for rr in got.authority] == authority
    assert _texts(got.additional) == sorted(additional)


def test_other_classes_are_refused_and_never_forwarded() -> None:
    chain, upstream = _chain()
    assert _run(chain.resolve("web.docker.", 1, 3, "web.docker.", LOCAL)).rcode == RCODE_REFUSED
    assert _run(chain.resolve("www.example.", 1, 4, "www.example.", LOCAL)).rcode == RCODE_REFUSED
    assert upstream.asked == []


# --- the forwarding cache, on a fake clock ------------------------------------------------------


@pytest.mark.parametrize(
    ("qname", "after_s", "cached", "ttl_left"),
    [
        ("www.example.", 0, True, 300),
        ("www.example.", 100, True, 200),  # served TTLs count down
        ("www.example.", 301, False, None),  # expired: asked again
        ("nx.example.", 29, True, None),  # negative: min(SOA TTL, MINIMUM) = 30 s (RFC 2308)
        ("nx.example.", 31, False, None),
        ("broken.example.", 0, False, None),  # SERVFAIL is never kept
    ],
)
def test_forward_cache_lifetimes(
    qname: str, after_s: float, cached: bool, ttl_left: int | None
) -> None:
    clock, stats = FakeClock(), Stats()
    upstream = ScriptedUpstream(UPSTREAM)
    cache = ForwardCache(upstream, stats, clock=clock)
    asyncio.run(cache.resolve(qname, 1, 1))
    clock.now += after_s
    hit = cache.get((qname, 1, 1))
    assert (hit is not None) == cached
    if hit is not None and ttl_left is not None:
        assert hit.rrsets[0][0].ttl == ttl_left
    assert stats.forward_cache_misses == 1 + (0 if cached else 1)


def test_forward_cache_caps_ttls_and_coalesces() -> None:
    clock = FakeClock()
    upstream = ScriptedUpstream(UPSTREAM)
    cache = ForwardCache(upstream, Stats(), clock=clock, max_ttl_s=60, max_negative_ttl_s=10)

    async def both() -> list[Answer]:
        return await asyncio.gather(*(cache.resolve("www.example.", 1, 1) for _ in range(5)))

    answers = asyncio.run(both())
    assert upstream.asked == ["www.example."]  # five identical questions, one upstream query
    assert all(a.rrsets[0][0].ttl == 300 for a in answers)
    clock.now += 61
    assert cache.get(("www.example.", 1, 1)) is None  # kept at most max_ttl_s
    asyncio.run(cache.resolve("nx.example.", 1, 1))
    clock.now += 11
    assert cache.get(("nx.example.", 1, 1)) is None  # negative answers at most 10 s


# --- the ACL ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("networks", "client", "allowed"),
    [
        (["127.0.0.0/8"], "127.0.0.1", True),
        (["127.0.0.0/8"], "127.255.0.9", True),
        (["127.0.0.0/8"], "10.0.0.1", False),
        (["10.0.0.0/8", "fd00::/8"], "fd00::5", True),
        (["10.0.0.0/8"], "::ffff:10.1.1.1", True),  # IPv4-mapped IPv6: its IPv4 address
        (["::1/128"], "::1", True),
        (["10.0.0.0/8"], "not an address", False),
        ([], "127.0.0.1", False),
        (["0.0.0.0/0"], "198.51.100.7", True),
    ],
)
def test_acl(networks: list[str], client: str, allowed: bool) -> None:
    assert Acl(networks).allows(client) is allowed


@pytest.mark.parametrize(
    ("qname", "depends"),
    [
        ("nope.docker.", {"nope.docker.", "*.docker."}),  # not the apex: it always exists
        ("a.b.nope.docker.", {"a.b.nope.docker.", "b.nope.docker.", "nope.docker.", "*.docker."}),
        ("q.x.deep.docker.", {"q.x.deep.docker.", "x.deep.docker.", "*.x.deep.docker."}),
        ("web.docker.", {"web.docker."}),
    ],
)
def test_what_an_answer_depends_on(qname: str, depends: set[str]) -> None:
    """A cached answer is dropped when one of these names changes; a change anywhere in the
    zone touches the apex, so no answer may depend on it (negative ones would never stay)."""
    store = RecordStore()
    store.replace_owner("static", "config", STORE)
    answer = LocalZone(store, ["docker."]).answer(qname, QTYPE.A, qname)
    assert answer is not None and set(answer.depends) == depends
