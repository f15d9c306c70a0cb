"""Forwarding through a running dnsd to upstreams the test starts on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rdatatype
import pytest
from conftest import Dnsd, DnsdFactory, FakeUpstream, StopAtEnd, eventually, free_port, query, rcode
from dnslib import QTYPE, RR, A
from testbed import certs as testbed_certs

from dnsd.resolve.answer import Answer
from dnsd.resolve.cache import ForwardCache
from dnsd.stats import Stats

_SLOW_TIMEOUT = "[forward]\ntimeout = 4\n"  # an upstream timeout no test waits for


def test_forwarded_answer_is_cached_and_counts_down(upstream: FakeUpstream, dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{upstream.port}")
    first = query(dnsd.port, "example.com", "A")
    assert rcode(first) == "NOERROR"
    assert [r.to_text() for r in first.answer[0]] == ["1.2.3.4"]
    assert not first.flags & dns.flags.AA
    assert first.answer[0].ttl == 300
    for _ in range(5):
        query(dnsd.port, "example.com", "A")
        query(dnsd.port, "EXAMPLE.com", "A", tcp=True)
    assert len(upstream.queries) == 1  # every later answer came from the cache
    time.sleep(2.2)
    later = query(dnsd.port, "example.com", "A")
    assert 296 <= later.answer[0].ttl <= 298
    assert len(upstream.queries) == 1


def test_negative_answers_are_cached_per_rfc2308(upstream: FakeUpstream, dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{upstream.port}")
    reply = query(dnsd.port, "nxname.test", "A")
    assert rcode(reply) == "NXDOMAIN"
    assert reply.authority[0].ttl == 300  # as sent; kept for min(TTL, MINIMUM) = 30 s
    query(dnsd.port, "nxname.test", "A")
    assert len(upstream.queries) == 1


def test_zero_ttl_is_not_cached(upstream: FakeUpstream, dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    upstream.ttl = 0
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{upstream.port}")
    query(dnsd.port, "example.com", "A")
    query(dnsd.port, "example.com", "A")
    assert len(upstream.queries) == 2


def test_timeout_fails_over_to_the_next_upstream(stop_at_end: StopAtEnd, dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    silent = stop_at_end(FakeUpstream(mode="silent").start())
    good = stop_at_end(FakeUpstream(address="5.6.7.8").start())
    config = "[forward]\ntimeout = 0.5\n"
    dnsd = dnsd_factory(
        "--upstream",
        f"127.0.0.1:{silent.port}",
        "--upstream",
        f"127.0.0.1:{good.port}",
        config=config,
    )
    reply = query(dnsd.port, "failover.example", "A", timeout=5)
    assert [r.to_text() for r in reply.answer[0]] == ["5.6.7.8"]
    assert len(silent.queries) == 1 and len(good.queries) == 1
    # The failed upstream is tried last from now on: not asked again, so no new timeout.
    query(dnsd.port, "second.example", "A", timeout=5)
    assert len(silent.queries) == 1 and len(good.queries) == 2


def test_every_upstream_down_is_servfail(stop_at_end: StopAtEnd, dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    silent = stop_at_end(FakeUpstream(mode="silent").start())
    closed_port = free_port()  # nothing listens: ICMP port unreachable
    dnsd = dnsd_factory(
        "--upstream",
        f"127.0.0.1:{silent.port}",
        "--upstream",
        f"127.0.0.1:{closed_port}",
        config="[forward]\ntimeout = 0.3\n",
    )
    reply = query(dnsd.port, "down.example", "A", timeout=5)
    assert rcode(reply) == "SERVFAIL"
    assert dnsd.proc.poll() is None


def test_spoofed_reply_with_wrong_id_is_ignored(stop_at_end: StopAtEnd, dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    spoofing = stop_at_end(FakeUpstream(mode="spoof", address="9.9.9.9").start())
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{spoofing.port}")
    reply = query(dnsd.port, "spoof.example", "A")
    assert [r.to_text() for r in reply.answer[0]] == ["9.9.9.9"]
    assert rcode(reply) == "NOERROR"


def test_truncated_upstream_answer_is_retried_over_tcp(
    stop_at_end: StopAtEnd, dnsd_factory
) -> None:  # type: ignore[no-untyped-def]
    truncating = stop_at_end(FakeUpstream(mode="truncate", answers_per_name=5).start())
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{truncating.port}")
    reply = query(dnsd.port, "big.example", "A")
    assert len(reply.answer[0]) == 5
    assert [proto for proto, _, _ in truncating.queries] == ["udp", "tcp"]


def test_identical_concurrent_misses_go_upstream_once(stop_at_end: StopAtEnd, dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    slowish = stop_at_end(
        FakeUpstream(mode="spoof").start()
    )  # the spoofed first reply delays the answer 50 ms
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{slowish.port}")
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: query(dnsd.port, "same.example", "A"), range(8)))
    assert all(rcode(reply) == "NOERROR" for reply in replies)
    assert len(slowish.queries) == 1


def test_clients_outside_allow_recursion_are_refused(upstream: FakeUpstream, dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    config = '[server]\nallow_recursion = ["10.0.0.0/8"]\n'
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{upstream.port}", config=config)
    assert rcode(query(dnsd.port, "example.com", "A")) == "REFUSED"
    assert rcode(query(dnsd.port, "example.com", "A")) == "REFUSED"
    assert rcode(query(dnsd.port, "nope.docker", "A")) == "NXDOMAIN"  # own zone still answered
    assert upstream.queries == []


def test_cached_forwarded_answer_not_served_to_refused_client(
    upstream: FakeUpstream, dnsd_factory
) -> None:  # type: ignore[no-untyped-def]
    # 127.0.0.1 may recurse, 127.0.0.2 may not: the packed-answer cache must respect that.
    config = '[server]\nallow_recursion = ["127.0.0.1/32"]\n'
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{upstream.port}", config=config)
    assert rcode(query(dnsd.port, "example.com", "A")) == "NOERROR"
    assert rcode(query(dnsd.port, "example.com", "A", source="127.0.0.2")) == "REFUSED"


def test_no_forward_refuses_outside_names(upstream: FakeUpstream, dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{upstream.port}", "--no-forward")
    assert rcode(query(dnsd.port, "example.com", "A")) == "REFUSED"
    assert upstream.queries == []


@pytest.mark.parametrize("rdtype", ["AAAA", "MX", "TXT"])
def test_other_types_are_forwarded(upstream: FakeUpstream, dnsd_factory, rdtype: str) -> None:  # type: ignore[no-untyped-def]
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{upstream.port}")
    reply = query(dnsd.port, "example.com", rdtype)
    assert rcode(reply) == "NOERROR"
    assert upstream.queries == [("udp", "example.com.", rdtype)]


def test_default_upstreams_come_from_resolv_conf(
    upstream: FakeUpstream, tmp_path, dnsd_factory
) -> None:  # type: ignore[no-untyped-def]
    from dnsd.resolve.upstreams import Upstream, resolv_conf_upstreams

    text = (
        "# x\nnameserver 127.0.0.1\nnameserver 10.0.0.53\nsearch local\nnameserver fe80::1%eth0\n"
    )
    own = {("127.0.0.1", 53)}
    assert resolv_conf_upstreams(text, own) == [Upstream("10.0.0.53"), Upstream("fe80::1")]
    # A running dnsd with only resolv_conf set: our fake upstream on port 53 is not possible
    # without root, so check the wiring with a resolv.conf naming nothing usable -> REFUSED.
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search example\n")
    dnsd = dnsd_factory(config=f'[forward]\nresolv_conf = "{resolv}"\n')
    assert rcode(query(dnsd.port, "example.com", "A")) == "REFUSED"
    assert "no upstream resolvers found" in dnsd.log()


def test_cname_leaving_the_zone_is_followed_upstream(
    upstream: FakeUpstream, tmp_path, dnsd_factory
) -> None:  # type: ignore[no-untyped-def]
    config = '[[static.records]]\nname = "ext"\ntype = "CNAME"\nvalue = "outside.example."\n'
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{upstream.port}", config=config)
    reply = query(dnsd.port, "ext.docker", "A")
    assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert reply.answer[1][0].to_text() == upstream.address
    assert reply.flags & dns.flags.AA
    assert ("udp", "outside.example.", "A") in upstream.queries
    # A missing target: NXDOMAIN for the chain (RFC 6604), the CNAME still shown.
    config_nx = '[[static.records]]\nname = "gone"\ntype = "CNAME"\nvalue = "nxtarget.example."\n'
    other = dnsd_factory("--upstream", f"127.0.0.1:{upstream.port}", config=config_nx)
    missing = query(other.port, "gone.docker", "A")
    assert rcode(missing) == "NXDOMAIN" and missing.answer[0].rdtype == dns.rdatatype.CNAME


def test_cname_not_followed_without_recursion(upstream: FakeUpstream, dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    config = '[[static.records]]\nname = "ext"\ntype = "CNAME"\nvalue = "outside.example."\n'
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{upstream.port}", "--no-forward", config=config)
    reply = query(dnsd.port, "ext.docker", "A")
    assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.CNAME]
    assert upstream.queries == []


def test_upstream_replies_are_scrubbed(stop_at_end: StopAtEnd, dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    poisoner = stop_at_end(FakeUpstream(mode="poison").start())
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{poisoner.port}")
    for _ in range(2):  # the miss and the cached answer
        reply = query(dnsd.port, "www.example.com", "A")
        names = {rrset.name.to_text() for rrset in reply.answer}
        assert names == {"www.example.com."}
        assert not reply.authority and not reply.additional
    # The out-of-bailiwick record was not cached for its own name either.
    query(dnsd.port, "victim.example", "A")
    assert ("udp", "victim.example.", "A") in poisoner.queries


def _rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


def test_large_answers_do_not_grow_the_cache_without_bound(
    stop_at_end: StopAtEnd, dnsd_factory
) -> None:  # type: ignore[no-untyped-def]
    big = stop_at_end(
        FakeUpstream(mode="truncate", answers_per_name=2000).start()
    )  # ~32 KB over TCP
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{big.port}")
    query(dnsd.port, "warm.example", "A", tcp=True)
    before = _rss_kb(dnsd.proc.pid)
    for i in range(100):
        reply = query(dnsd.port, f"n{i}.example", "A", tcp=True, timeout=5)
        assert len(reply.answer[0]) == 2000
    grown_mb = (_rss_kb(dnsd.proc.pid) - before) / 1024
    assert grown_mb < 40, f"RSS grew {grown_mb:.0f} MB for 100 large answers"
    asked = len(big.queries)
    query(dnsd.port, "n1.example", "A", tcp=True, timeout=5)
    assert len(big.queries) > asked  # over the size cap: passed on, not kept


def test_forward_cache_is_bounded_in_bytes() -> None:
    now = [0.0]
    stats = Stats()

    class Upstream:
        async def resolve(self, qname: str, qtype: int, qclass: int) -> Answer:
            rr = RR(qname, QTYPE.A, ttl=300, rdata=A("10.0.0.1"))
            return Answer(0, rrsets=[[rr]], recursive=True, wire_size=4000)

    cache = ForwardCache(Upstream(), stats, clock=lambda: now[0], max_bytes=2_000_000)

    async def fill() -> None:
        for i in range(100):
            await cache.resolve(f"n{i}.example.", 1, 1)

    asyncio.run(fill())
    assert cache.bytes <= 2_000_000
    assert 0 < len(cache) < 100  # the oldest went first
    assert cache.get(("n99.example.", 1, 1)) is not None
    assert cache.get(("n0.example.", 1, 1)) is None


def test_forwarding_loop_to_itself_is_detected(upstream: FakeUpstream, dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    dnsd = dnsd_factory(
        "--upstream", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{upstream.port}", port=port
    )
    eventually(lambda: "forwarding loop: upstream 127.0.0.1:" in dnsd.log())
    assert f"upstream 127.0.0.1:{port} sends" in dnsd.log()
    reply = query(dnsd.port, "example.com", "A")  # the real upstream answers
    assert rcode(reply) == "NOERROR" and ("udp", "example.com.", "A") in upstream.queries
    assert dnsd.metric("dnsd_forward_requests_total", to=f"127.0.0.1:{port}") == 0


def test_a_lone_loop_refuses_instead_of_timing_out(dnsd_factory) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{port}", port=port)
    eventually(lambda: "forwarding loop" in dnsd.log())
    # REFUSED at once: a question sent to itself would have timed out (SERVFAIL).
    assert rcode(query(dnsd.port, "example.com", "A")) == "REFUSED"
    assert dnsd.metric("dnsd_forward_requests_total", to=f"127.0.0.1:{port}") == 0


def test_wildcard_listen_owns_loopback_nameservers() -> None:
    from dnsd.resolve.upstreams import Upstream, resolv_conf_upstreams

    text = "nameserver 127.0.0.1\nnameserver 127.0.0.53\nnameserver 10.0.0.53\n"
    assert resolv_conf_upstreams(text, {("0.0.0.0", 53)}) == [Upstream("10.0.0.53")]
    assert resolv_conf_upstreams(text, {("0.0.0.0", 5300)}) == [
        Upstream("127.0.0.1"), Upstream("127.0.0.53"), Upstream("10.0.0.53"),
    ]  # fmt: skip


def test_domains_go_to_their_own_upstreams(dnsd_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    default, corp, lab = (
        FakeUpstream(address=a).start() for a in ("1.2.3.4", "10.5.0.1", "10.6.0.1")
    )
    try:
        config = (
            f'[forward]\nupstreams = ["127.0.0.1:{default.port}"]\n[forward.domains]\n'
            f'"corp.example." = ["127.0.0.1:{corp.port}"]\n'
            f'"lab.corp.example" = ["127.0.0.1:{lab.port}"]\n'
        )
        dnsd = dnsd_factory(config=config)
        answer = lambda name: [r.to_text() for rs in query(dnsd.port, name).answer for r in rs]  # noqa: E731
        assert answer("www.corp.example") == ["10.5.0.1"]
        assert answer("host.lab.corp.example") == ["10.6.0.1"]  # the longest domain wins
        assert answer("corp.example.com") == ["1.2.3.4"]  # a suffix of labels, not of text
        assert [q[1] for q in corp.queries] == ["www.corp.example."]
        assert [q[1] for q in lab.queries] == ["host.lab.corp.example."]
        assert [q[1] for q in default.queries] == ["corp.example.com."]
        # With forwarding off, only the domains are forwarded.
        only = dnsd_factory("--no-forward", config=config)
        assert [r.to_text() for rs in query(only.port, "a.corp.example").answer for r in rs] == [
            "10.5.0.1"
        ]
        assert rcode(query(only.port, "example.com")) == "REFUSED"
    finally:
        for fake in (default, corp, lab):
            fake.stop()


def test_domain_config_errors_are_clear(tmp_path: Path) -> None:
    from dnsd.config import ConfigError, load

    def check(toml: str) -> str:
        path = tmp_path / "c.toml"
        path.write_text(toml)
        with pytest.raises(ConfigError) as caught:
            load(str(path))
        return str(caught.value)

    assert "inside a zone" in check('[forward.domains]\n"web.docker." = ["10.0.0.1"]\n')
    assert "not a domain name" in check('[forward.domains]\n"bad name" = ["10.0.0.1"]\n')
    assert "at least one upstream" in check('[forward.domains]\n"corp." = []\n')
    assert "ADDR[:PORT]" in check('[forward.domains]\n"corp." = ["nowhere"]\n')
    assert "TLS server name" in check('[forward]\nupstreams = ["tls://10.0.0.1#a..b"]\n')
    env = load(None, {"DNSD_FORWARD_DOMAINS": "corp.=10.0.0.1,10.0.0.2;lab=tls://10.0.0.3"})
    assert env.forward.domains == {
        "corp.": ["10.0.0.1", "10.0.0.2"],
        "lab.": ["tls://10.0.0.3"],
    }


def _test_tls(tmp_path: Path) -> tuple[Any, ssl.SSLContext]:
    """The test bed's CA and a server context for a TLS upstream on 127.0.0.1."""
    made = testbed_certs.make(tmp_path / "tls")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(made.server_cert, made.server_key)
    return made, server_tls


def test_dns_over_tls_upstream(stop_at_end: StopAtEnd, dnsd_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    made, server_tls = _test_tls(tmp_path)
    dot = stop_at_end(FakeUpstream(address="10.8.5.3", tls=server_tls).start())
    good = dnsd_factory(
        config=f'[forward]\nupstreams = ["tls://127.0.0.1:{dot.port}#localhost"]\n'
        f'tls_ca = "{made.ca}"\n'
    )
    reply = query(good.port, "secure.example")
    assert [r.to_text() for rs in reply.answer for r in rs] == ["10.8.5.3"]
    assert dot.queries == [("tcp", "secure.example.", "A")]  # over TLS, never plain UDP
    wrong_name = dnsd_factory(
        config=f'[forward]\nupstreams = ["tls://127.0.0.1:{dot.port}#dns.elsewhere"]\n'
        f'tls_ca = "{made.ca}"\ntimeout = 1.0\n'
    )
    assert rcode(query(wrong_name.port, "secure.example", timeout=5)) == "SERVFAIL"
    untrusted = dnsd_factory(  # the system CAs do not know the test CA
        config=f'[forward]\nupstreams = ["tls://127.0.0.1:{dot.port}#localhost"]\ntimeout = 1.0\n'
    )
    assert rcode(query(untrusted.port, "other.example", timeout=5)) == "SERVFAIL"
    assert len(dot.queries) == 1  # no question was sent to a server it could not trust


ZONE_WITH_API = (
    '[[static.records]]\nname = "api"\ntype = "A"\nvalue = "10.0.0.20"\n'
    '[[static.records]]\nname = "out"\ntype = "CNAME"\nvalue = "cname1.example.com."\n'
)


def answers(message: dns.message.Message) -> list[str]:
    return [line for rrset in message.answer for line in rrset.to_text().splitlines()]


def test_upstream_records_for_our_zones_never_reach_clients(
    upstream: FakeUpstream,
    dnsd_factory,  # type: ignore[no-untyped-def]
) -> None:
    upstream.scripted["cname1.example.com."] = (
        "cname1.example.com. 300 CNAME api.docker.\napi.docker. 3000 A 6.6.6.6"
    )
    upstream.scripted["cname2.example.com."] = (
        "cname2.example.com. 300 CNAME nothing.docker.\nnothing.docker. 3000 A 6.6.6.6"
    )
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{upstream.port}", config=ZONE_WITH_API)
    for _ in range(2):  # from upstream, then from the caches
        reply = query(dnsd.port, "cname1.example.com.")
        chain = answers(reply)
        assert len(chain) == 2 and chain[0].endswith("IN CNAME api.docker.")
        assert chain[1].startswith("api.docker.") and chain[1].endswith("IN A 10.0.0.20")
        assert "6.6.6.6" not in reply.to_text()
        # Through a local CNAME that leaves the zone and comes back (an etcd or static one).
        reply = query(dnsd.port, "out.docker.")
        assert "6.6.6.6" not in reply.to_text()
        assert answers(reply)[-1].endswith("IN A 10.0.0.20")
        # A chain into a name the zone does not hold: the zone's NXDOMAIN and SOA.
        reply = query(dnsd.port, "cname2.example.com.")
        assert rcode(reply) == "NXDOMAIN"
        assert "6.6.6.6" not in reply.to_text()
        assert [rrset.name.to_text() for rrset in reply.authority] == ["docker."]
    assert dnsd.metric("dnsd_forward_entered_zone") >= 3  # later: the answer cache


def test_a_chain_into_the_zone_follows_the_zone_as_it_changes(
    upstream: FakeUpstream,
    dnsd_factory,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.30 moving\n")
    upstream.scripted["in.example.com."] = "in.example.com. 300 CNAME moving.docker."
    config = f'[static]\nhosts = ["{hosts}"]\nwatch_interval = 0.1\n'
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{upstream.port}", config=config)
    assert answers(query(dnsd.port, "in.example.com."))[-1].endswith("A 10.0.0.30")
    hosts.write_text("10.0.0.31 moving\n")
    eventually(lambda: answers(query(dnsd.port, "in.example.com."))[-1].endswith("A 10.0.0.31"))
    assert len([q for q in upstream.queries if q[1] == "in.example.com."]) == 1  # cached


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("192.168.1.1", True),
        ("10.1.2.3", True),
        ("127.0.0.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("::1", True),
        ("fe80::1", True),
        ("fd00::1", True),
        ("::ffff:a00:1", True),  # ::ffff:10.0.0.1
        ("93.184.216.34", False),
        ("2606:2800:220:1::1", False),
    ],
)
def test_rebind_guard_refuses_non_global_addresses(address: str, refused: bool) -> None:
    from dnsd.resolve.rebind import RebindGuard

    rtype = "AAAA" if ":" in address else "A"
    records = RR.fromZone(f"evil.example. 60 {rtype} {address}")
    guard = RebindGuard(["corp.example."])
    assert guard.allows("evil.example.", records) is not refused
    assert guard.allows("host.corp.example.", records)  # an allowed domain keeps everything


def test_stop_rebind_refuses_private_answers_but_allowed_domains(
    upstream: FakeUpstream,
    dnsd_factory,  # type: ignore[no-untyped-def]
) -> None:
    upstream.scripted["evil.example.org."] = "evil.example.org. 300 A 169.254.169.254"
    upstream.scripted["nas.home.example."] = "nas.home.example. 300 A 192.168.1.10"
    upstream.scripted["www.example.org."] = "www.example.org. 300 A 93.184.216.34"
    target = ["--upstream", f"127.0.0.1:{upstream.port}"]
    off = dnsd_factory(*target)
    assert answers(query(off.port, "evil.example.org."))  # off by default: passed on
    config = '[forward]\nstop_rebind = true\nrebind_allowed = ["home.example"]\n'
    dnsd = dnsd_factory(*target, config=config)
    for _ in range(2):  # the refusal is not cached as an answer
        reply = query(dnsd.port, "evil.example.org.")
        assert rcode(reply) == "REFUSED" and not reply.answer
    assert answers(query(dnsd.port, "nas.home.example.")) == [
        "nas.home.example. 300 IN A 192.168.1.10"
    ]
    assert rcode(query(dnsd.port, "www.example.org.")) == "NOERROR"
    assert dnsd.metric("dnsd_forward_rebind_refused") == 2


@pytest.mark.parametrize("tcp", [False, True])
def test_a_dot_inside_a_label_is_a_name_like_any_other(
    upstream: FakeUpstream,
    dnsd_factory,  # type: ignore[no-untyped-def]
    tcp: bool,
) -> None:
    import dns.name
    import dns.query

    config = '[[static.records]]\nname = "web"\ntype = "A"\nvalue = "10.0.0.1"\n'
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{upstream.port}", config=config)
    send = dns.query.tcp if tcp else dns.query.udp

    def ask(*labels: bytes) -> dns.message.Message:
        message = dns.message.make_query(dns.name.Name([*labels, b""]), "A")
        return send(message, "127.0.0.1", port=dnsd.port, timeout=3)  # type: ignore[no-any-return]

    for labels in ([b"we.b", b"docker"], [b"web.", b"docker"], [b".", b"docker"]):
        reply = ask(*labels)  # one label under docker. that the zone does not hold
        assert rcode(reply) == "NXDOMAIN" and not reply.answer
    reply = ask(b"web.docker")  # one top-level label: not the zone's web.docker.
    assert "10.0.0.1" not in reply.to_text() and rcode(reply) != "SERVFAIL"
    for labels in ([b"a.b", b"example", b"org"], [b"a.", b"example", b"org"]):
        reply = ask(*labels)  # forwarded with its own labels, its answer passed on
        assert rcode(reply) == "NOERROR"
        assert reply.answer[0].name == dns.name.Name([*labels, b""])
    assert rcode(ask(b"web", b"docker")) == "NOERROR"


# --- serve-stale (RFC 8767) ------------------------------------------------------------------


def _a_answer(reply: dns.message.Message) -> tuple[list[str], int]:
    rrset = reply.answer[0]
    return sorted(r.to_text() for r in rrset), rrset.ttl


def test_an_expired_answer_is_served_stale_when_the_only_upstream_dies(
    stop_at_end: StopAtEnd, dnsd_factory: DnsdFactory
) -> None:
    """The upstream is killed after the name is cached; once the entry has expired the next
    asker gets the stale answer (TTL 30) well within 2 s, a negative answer too, counted and
    logged once."""
    upstream = FakeUpstream(ttl=1).start()
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{upstream.port}")
    assert _a_answer(query(dnsd.port, "app.example")) == (["1.2.3.4"], 1)
    assert rcode(query(dnsd.port, "nxgone.test")) == "NXDOMAIN"
    upstream.stop()
    time.sleep(1.3)  # both expired
    # A closed port fails at once: the stale answer comes before the 1.8 s client timer
    # (a client giving up after 1.5 s still gets it).
    reply = query(dnsd.port, "app.example", timeout=1.5)
    assert _a_answer(reply) == (["1.2.3.4"], 30)
    negative = query(dnsd.port, "nxgone.test", timeout=3)
    assert rcode(negative) == "NXDOMAIN" and negative.authority[0].ttl == 30
    assert rcode(query(dnsd.port, "never-asked.example", timeout=5)) == "SERVFAIL"
    assert dnsd.metric("dnsd_forward_stale_answers_total") == 2
    assert dnsd.log().count("serving expired answers") == 1


def test_a_stalled_upstream_gets_the_stale_answer_in_time_and_the_fresh_one_after(
    stop_at_end: StopAtEnd, dnsd_factory: DnsdFactory
) -> None:
    """An upstream that stops answering: the stale answer comes at the 1.8 s client timer,
    well before the upstream's 4 s timeout (a client giving up after 3.5 s gets it), the
    next one without waiting for that timer (a client giving up after 1 s gets it); when the
    upstream answers again the fresh answer returns."""
    upstream = stop_at_end(FakeUpstream(ttl=1).start())
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{upstream.port}", config=_SLOW_TIMEOUT)
    assert _a_answer(query(dnsd.port, "api.example")) == (["1.2.3.4"], 1)
    upstream.mode = "silent"
    time.sleep(1.3)  # the answer has expired (TTL 1)
    assert _a_answer(query(dnsd.port, "api.example", timeout=3.5)) == (["1.2.3.4"], 30)
    assert dnsd.metric("dnsd_forward_stale_answers_total") == 1
    # The refresh failed a moment ago: stale at once (not after another 1.8 s).
    assert _a_answer(query(dnsd.port, "api.example", timeout=1)) == (["1.2.3.4"], 30)
    upstream.mode, upstream.address = "answer", "5.6.7.8"
    eventually(lambda: _a_answer(query(dnsd.port, "api.example"))[0] == ["5.6.7.8"], timeout=15)
    assert "upstreams answer again" in dnsd.log()


def test_serve_stale_can_be_turned_off(stop_at_end: StopAtEnd, dnsd_factory: DnsdFactory) -> None:
    upstream = FakeUpstream(ttl=1).start()
    config = "[forward]\nstale_for = 0\n"
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{upstream.port}", config=config)
    assert _a_answer(query(dnsd.port, "app.example")) == (["1.2.3.4"], 1)
    upstream.stop()
    time.sleep(1.3)
    assert rcode(query(dnsd.port, "app.example", timeout=5)) == "SERVFAIL"
    assert dnsd.metric("dnsd_forward_stale_answers_total") == 0


# --- health-checked upstreams ----------------------------------------------------------------


def _ready(dnsd: Dnsd) -> dict[str, Any]:
    return json.loads(dnsd._get("/ready"))  # type: ignore[no-any-return]


def test_a_failing_upstream_goes_down_is_probed_and_comes_back(
    stop_at_end: StopAtEnd, dnsd_factory: DnsdFactory
) -> None:
    """max_fails timeouts in a row mark the only upstream down: questions then get SERVFAIL,
    or a stale answer, at once instead of after forward.timeout; ". NS" probes bring it back
    as soon as it answers."""
    upstream = stop_at_end(FakeUpstream(ttl=1).start())
    config = "[forward]\ntimeout = 0.4\nmax_fails = 2\nhealth_check = 0.2\n"
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{upstream.port}", config=config)
    to = f"127.0.0.1:{upstream.port}"
    assert _a_answer(query(dnsd.port, "old.example")) == (["1.2.3.4"], 1)
    assert _ready(dnsd)["upstreams"] == {to: "up"}
    upstream.mode = "silent"
    for name in ("n1.example", "n2.example"):  # each waits forward.timeout
        assert rcode(query(dnsd.port, name, timeout=3)) == "SERVFAIL"
    assert _ready(dnsd)["upstreams"] == {to: "down"}
    assert dnsd.metric("dnsd_forward_upstream_healthy", to=to) == 0
    asked_before = len(upstream.queries)
    assert rcode(query(dnsd.port, "n3.example", timeout=3)) == "SERVFAIL"
    time.sleep(1.2)  # old.example has expired
    assert _a_answer(query(dnsd.port, "old.example", timeout=3)) == (["1.2.3.4"], 30)
    # Neither went to the upstream that is down (so neither waited on its timeout).
    assert [q for q in upstream.queries[asked_before:] if q[1] != "."] == []
    eventually(lambda: ("udp", ".", "NS") in upstream.queries, timeout=3)  # probed
    upstream.mode = "answer"
    eventually(lambda: _ready(dnsd)["upstreams"] == {to: "up"}, timeout=3)
    assert _a_answer(query(dnsd.port, "n4.example")) == (["1.2.3.4"], 1)
    assert dnsd.metric("dnsd_forward_upstream_healthy", to=to) == 1
    assert "is down" in dnsd.log() and "answers again" in dnsd.log()


def test_a_servfail_reply_goes_to_the_next_upstream(
    stop_at_end: StopAtEnd, dnsd_factory: DnsdFactory
) -> None:
    broken = stop_at_end(FakeUpstream(mode="servfail").start())
    good = stop_at_end(FakeUpstream(address="5.6.7.8").start())
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{broken.port}",
                        "--upstream", f"127.0.0.1:{good.port}")  # fmt: skip
    assert _a_answer(query(dnsd.port, "x.example"))[0] == ["5.6.7.8"]
    assert len(broken.queries) == 1 and len(good.queries) == 1
    assert dnsd.metric("dnsd_forward_failures_total", to=f"127.0.0.1:{broken.port}") == 1


@pytest.mark.parametrize("policy", ["sequential", "round_robin", "random"])
def test_the_upstream_policy_orders_healthy_upstreams(
    policy: str, stop_at_end: StopAtEnd, dnsd_factory: DnsdFactory
) -> None:
    first = stop_at_end(FakeUpstream(address="10.0.0.1").start())
    second = stop_at_end(FakeUpstream(address="10.0.0.2").start())
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{first.port}",
                        "--upstream", f"127.0.0.1:{second.port}",
                        config=f'[forward]\npolicy = "{policy}"\n')  # fmt: skip
    for i in range(20):
        query(dnsd.port, f"q{i}.example")
    counts = (len(first.queries), len(second.queries))
    if policy == "sequential":
        assert counts == (20, 0)
    elif policy == "round_robin":
        assert counts == (10, 10)
    else:
        assert min(counts) >= 2 and sum(counts) == 20, counts


def test_dot_keeps_one_connection_pipelines_and_reconnects(
    stop_at_end: StopAtEnd, dnsd_factory: DnsdFactory, tmp_path: Path
) -> None:
    """DoT questions share one kept-open TLS connection; pipelined replies that come out of
    order are matched by ID; a connection the server closes is replaced without a lost
    question."""
    made, server_tls = _test_tls(tmp_path)
    dot = stop_at_end(FakeUpstream(address="10.8.5.4", tls=server_tls).start())
    dnsd = dnsd_factory(
        config=f'[forward]\nupstreams = ["tls://127.0.0.1:{dot.port}#localhost"]\n'
        f'tls_ca = "{made.ca}"\n'
    )

    def ask(name: str) -> list[str]:
        return [r.to_text() for rs in query(dnsd.port, name, timeout=5).answer for r in rs]

    with ThreadPoolExecutor(8) as pool:
        assert set(map(tuple, pool.map(ask, [f"p{i}.example" for i in range(40)]))) == {
            ("10.8.5.4",)
        }
    assert dot.tcp_connections == 1  # one connection for all 40
    dot.out_of_order = True  # each pair: the second question answered first
    with ThreadPoolExecutor(2) as pool:
        for pair in range(5):
            names = [f"o{pair}a.example", f"o{pair}b.example"]
            assert list(pool.map(ask, names)) == [["10.8.5.4"], ["10.8.5.4"]]
    dot.out_of_order, dot.close_after = False, 3
    for i in range(10):  # the server hangs up every third answer
        assert ask(f"c{i}.example") == ["10.8.5.4"]
    assert dot.tcp_connections >= 4
    assert (
        dnsd.metric("dnsd_forward_failures_total", to=f"tls://127.0.0.1:{dot.port}#localhost") == 0
    )


def test_a_popular_forwarded_answer_is_refreshed_before_it_expires(
    stop_at_end: StopAtEnd, dnsd_factory: DnsdFactory
) -> None:
    """A name asked several times a second: refreshed from upstream ahead of its expiry, so no
    asker ever waits on the (slow: 1.5 s) upstream after the first; counted.  Each asker
    after the first gives up after 1 s, so one that waited on the upstream would fail."""
    upstream = stop_at_end(FakeUpstream(ttl=3, delay=1.5).start())
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{upstream.port}", config=_SLOW_TIMEOUT)
    assert _a_answer(query(dnsd.port, "hot.example", timeout=8))[0] == ["1.2.3.4"]
    deadline = time.monotonic() + 7.5  # two and a half TTLs
    while time.monotonic() < deadline:
        reply = query(dnsd.port, "hot.example", timeout=1.0)
        assert _a_answer(reply)[0] == ["1.2.3.4"]
        time.sleep(0.1)
    asked = [q for q in upstream.queries if q[1] == "hot.example."]
    assert len(asked) >= 3  # the first question and a refresh per TTL
    assert dnsd.metric("dnsd_forward_prefetches_total") >= 2


def test_an_idle_dot_connection_is_closed_and_opened_again(tmp_path: Path) -> None:
    from dnslib import DNSRecord

    from dnsd.resolve.dot import DotConnection

    made, server_tls = _test_tls(tmp_path)
    upstream = FakeUpstream(address="10.8.5.6", tls=server_tls).start()
    client_tls = ssl.create_default_context(cafile=str(made.ca))

    async def run() -> list[int]:
        connection = DotConnection("127.0.0.1", upstream.port, client_tls, "localhost", 0.3)
        opened = []
        for name, pause in (("one.example", 0.0), ("two.example", 0.6), ("three.example", 0)):
            question = DNSRecord.question(name)
            data = await connection.ask(question.pack(), question.header.id)
            assert str(DNSRecord.parse(data).a.rdata) == "10.8.5.6"
            opened.append(upstream.tcp_connections)
            await asyncio.sleep(pause)  # 0.6 s: past the idle timeout, closed
        await connection.aclose()
        return opened

    try:
        assert asyncio.run(run()) == [1, 1, 2]  # reused, then opened again after the idle time
    finally:
        upstream.stop()


@pytest.mark.parametrize("stall", ["silent", "partial"])
def test_a_dot_connection_that_stops_answering_is_replaced(tmp_path: Path, stall: str) -> None:
    """The server stops answering on its open connection (or sends half a frame, leaving the
    stream out of step) but answers a new one: the question that timed out with nothing read
    closes the connection, and the next question is answered over a new one."""
    from dnslib import DNSRecord

    from dnsd.resolve.dot import DotConnection

    made, server_tls = _test_tls(tmp_path)
    upstream = FakeUpstream(address="10.8.5.7", tls=server_tls, stall_after=1, stall=stall)
    upstream.start()
    client_tls = ssl.create_default_context(cafile=str(made.ca))

    async def run() -> list[str]:
        connection = DotConnection("127.0.0.1", upstream.port, client_tls, "localhost")
        outcomes = []
        for name in ("one.example", "two.example", "three.example"):
            question = DNSRecord.question(name)
            try:
                async with asyncio.timeout(1.0):  # the forwarder's timeout
                    data = await connection.ask(question.pack(), question.header.id)
                outcomes.append(str(DNSRecord.parse(data).a.rdata))
            except TimeoutError:
                outcomes.append("timeout")
        await connection.aclose()
        return outcomes

    try:
        assert asyncio.run(run()) == ["10.8.5.7", "timeout", "10.8.5.7"]
        assert upstream.tcp_connections == 2
    finally:
        upstream.stop()


def test_dnsd_replaces_a_silent_dot_connection(
    stop_at_end: StopAtEnd, dnsd_factory: DnsdFactory, tmp_path: Path
) -> None:
    """A TLS upstream that goes silent on its open connection costs one question, not every
    question until the idle timeout (which the questions themselves kept from coming)."""
    made, server_tls = _test_tls(tmp_path)
    dot = stop_at_end(FakeUpstream(address="10.8.5.8", tls=server_tls, stall_after=2).start())
    dnsd = dnsd_factory(
        config=f'[forward]\nupstreams = ["tls://127.0.0.1:{dot.port}#localhost"]\n'
        f'tls_ca = "{made.ca}"\ntimeout = 1.0\n'
    )
    eventually(lambda: dot.tcp_answered == 1)  # the start-up loop probe: the first answer
    assert _a_answer(query(dnsd.port, "one.example", timeout=5))[0] == ["10.8.5.8"]
    assert rcode(query(dnsd.port, "two.example", timeout=5)) == "SERVFAIL"  # went unanswered
    assert _a_answer(query(dnsd.port, "three.example", timeout=5))[0] == ["10.8.5.8"]
    assert dot.tcp_connections == 2


def _fails_prefixed(kind: str) -> Callable[[str], str]:
    return lambda name: kind if name.startswith("fail") else ""


@pytest.mark.parametrize("kind", ["servfail", "silent"])
def test_names_that_fail_do_not_take_the_upstream_down_for_others(
    kind: str, stop_at_end: StopAtEnd, dnsd_factory: DnsdFactory
) -> None:
    """One client's broken names (SERVFAIL replies, or no reply at all while the upstream
    answers everything else) are those names' failures: another client's new names are all
    answered, and the upstream is never marked down."""
    upstream = stop_at_end(FakeUpstream(broken=_fails_prefixed(kind)).start())
    config = "[forward]\ntimeout = 0.5\nhealth_check = 5\n"  # a probe would hide the outage
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{upstream.port}", config=config)
    other: list[str] = []
    with ThreadPoolExecutor(max_workers=3) as pool:
        for round_ in range(5):
            broken = [
                pool.submit(
                    query, dnsd.port, f"fail{round_}-{i}.example", timeout=3, source="127.0.0.2"
                )
                for i in range(3)
            ]
            for i in range(4):  # while the broken names wait (the silent kind)...
                other.append(rcode(query(dnsd.port, f"ok{round_}-{i}.example", source="127.0.0.3")))
            assert {rcode(f.result()) for f in broken} == {"SERVFAIL"}
            for i in range(4, 8):  # ... and once they have failed
                other.append(rcode(query(dnsd.port, f"ok{round_}-{i}.example", source="127.0.0.3")))
    assert other.count("SERVFAIL") == 0, other
    assert _ready(dnsd)["upstreams"] == {f"127.0.0.1:{upstream.port}": "up"}
    assert f"upstream 127.0.0.1:{upstream.port} is down" not in dnsd.log()


def test_a_failed_name_gets_servfail_at_once_for_failure_ttl(
    stop_at_end: StopAtEnd, dnsd_factory: DnsdFactory
) -> None:
    """RFC 9520: a name that failed at every upstream is not asked again for a while."""
    upstream = stop_at_end(FakeUpstream(broken=_fails_prefixed("servfail")).start())
    config = "[forward]\nfailure_ttl = 1\n"
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{upstream.port}", config=config)
    for _ in range(5):
        assert rcode(query(dnsd.port, "fail.example")) == "SERVFAIL"
    asked = [q for q in upstream.queries if q[1] == "fail.example."]
    assert len(asked) == 1
    assert dnsd.metric("dnsd_forward_failures_cached_total") == 4
    time.sleep(1.2)  # failure_ttl passed: asked again
    assert rcode(query(dnsd.port, "fail.example")) == "SERVFAIL"
    assert len([q for q in upstream.queries if q[1] == "fail.example."]) == 2


def test_a_servfail_given_while_no_upstream_is_healthy_is_not_kept(
    stop_at_end: StopAtEnd, dnsd_factory: DnsdFactory
) -> None:
    """The failure cache holds names an upstream failed, not the outage: a SERVFAIL given
    with no upstream healthy is not kept, and once the upstream is back every name that
    failed meanwhile is asked again."""
    upstream = stop_at_end(FakeUpstream().start())
    config = "[forward]\ntimeout = 0.3\nmax_fails = 1\nhealth_check = 0.2\nfailure_ttl = 60\n"
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{upstream.port}", config=config)
    to = f"127.0.0.1:{upstream.port}"
    upstream.mode = "silent"
    assert rcode(query(dnsd.port, "first.example", timeout=3)) == "SERVFAIL"  # marks it down
    assert _ready(dnsd)["upstreams"] == {to: "down"}
    assert rcode(query(dnsd.port, "second.example", timeout=3)) == "SERVFAIL"  # nobody asked
    upstream.mode = "answer"
    eventually(lambda: _ready(dnsd)["upstreams"] == {to: "up"}, timeout=5)
    assert _a_answer(query(dnsd.port, "second.example"))[0] == ["1.2.3.4"]
    # first.example was asked and failed, but during the outage: forgotten once it ended.
    assert _a_answer(query(dnsd.port, "first.example"))[0] == ["1.2.3.4"]


def test_the_first_answers_after_the_upstream_returns_are_fresh(
    stop_at_end: StopAtEnd, dnsd_factory: DnsdFactory
) -> None:
    """docs/forwarding.md's promise: once a health probe has brought the upstream back, the next
    askers wait for the refresh instead of getting the stale answer at once, and the stale
    answer held by the packed-answer cache is dropped."""
    upstream = stop_at_end(FakeUpstream(ttl=1).start())
    config = "[forward]\ntimeout = 0.3\nmax_fails = 1\nhealth_check = 0.2\n"
    dnsd = dnsd_factory("--upstream", f"127.0.0.1:{upstream.port}", config=config)
    to = f"127.0.0.1:{upstream.port}"
    assert _a_answer(query(dnsd.port, "app.example")) == (["1.2.3.4"], 1)
    upstream.mode = "silent"
    time.sleep(2.5)  # expired, and swept from the listeners' fast tables
    assert _a_answer(query(dnsd.port, "app.example", timeout=3)) == (["1.2.3.4"], 30)
    assert _a_answer(query(dnsd.port, "app.example", timeout=3)) == (["1.2.3.4"], 30)
    assert _ready(dnsd)["upstreams"] == {to: "down"}
    upstream.mode, upstream.address = "answer", "5.6.7.8"
    eventually(lambda: _ready(dnsd)["upstreams"] == {to: "up"}, timeout=5)
    for _ in range(5):
        assert _a_answer(query(dnsd.port, "app.example", timeout=3)) == (["5.6.7.8"], 1)
