"""The packed-answer cache: ID patched, case echoed, rotations, expiry, recursion check."""

from __future__ import annotations

import random
import time

import dns.edns
import dns.message
import dns.rdatatype
import dns.rrset
from hypothesis import given, settings
from hypothesis import strategies as st
from testbed.listener import served

from dnsd.admission import Admission
from dnsd.record import Record, SrvValue
from dnsd.records import RecordStore
from dnsd.resolve.acl import Acl
from dnsd.resolve.chain import standard_chain
from dnsd.resolve.local import LocalZone
from dnsd.stats import Stats
from dnsd.wire.answer_cache import AnswerCache
from dnsd.wire.answer_key import normalised_key
from dnsd.wire.codec import error_response, question_end
from dnsd.wire.query import QueryHandler


def wire(name: str, ident: int) -> bytes:
    message = dns.message.make_query(name, "A")
    message.id = ident
    return message.to_wire()


def response_for(query: bytes, marker: bytes) -> bytes:
    return query[:2] + b"\x85\x80" + query[4:] + marker


def test_hit_patches_id_and_echoes_case() -> None:
    cache = AnswerCache(lambda ip: True)
    first = wire("Web.Docker", 1)
    sent = cache.put(first, [response_for(first, b"A"), response_for(first, b"B")], 10.0, False)
    assert sent[:2] == first[:2] and sent.endswith(b"A")
    again = wire("wEB.dOCKER", 2)
    hit = cache.answer(again, "127.0.0.1", 1.0)
    assert hit is not None and hit[:2] == again[:2]
    assert hit[12 : question_end(again)] == again[12 : question_end(again)]
    assert hit.endswith(b"B")  # the next rotation
    lower = wire("web.docker", 3)
    assert cache.answer(lower, "127.0.0.1", 1.0) == lower[:2] + response_for(lower, b"A")[2:]


def test_expiry_and_recursion_and_clear() -> None:
    allowed = {"127.0.0.1"}
    cache = AnswerCache(lambda ip: ip in allowed)
    query = wire("example.com", 7)
    cache.put(query, [response_for(query, b"F")], expires=5.0, recursive=True)
    assert cache.answer(query, "127.0.0.1", 4.0) is not None
    assert cache.answer(query, "10.1.1.1", 4.0) is None  # not allowed to recurse
    assert cache.answer(query, "127.0.0.1", 6.0) is None  # expired
    cache.clear()
    assert len(cache) == 0


def test_bounded() -> None:
    cache = AnswerCache(lambda ip: True, max_entries=10)
    for i in range(25):
        query = wire(f"n{i}.docker", i)
        cache.put(query, [response_for(query, b"x")], float("inf"), False)
    assert len(cache) <= 10
    assert (
        len(cache.tables.exact) == len(cache.tables.normalised) == len(cache)
    )  # evicted from both


def test_error_response_keeps_id_and_opcode() -> None:
    query = wire("web.docker", 0xBEEF)
    reply = error_response(query, 4, echo_question=True)
    assert reply is not None
    assert reply[:2] == b"\xbe\xef" and reply[2] & 0x80 and reply[3] & 0x0F == 4
    assert reply[12:] == query[12 : question_end(query)]
    assert error_response(b"\x00\x01", 1) is None


def test_forwarded_entries_count_ttls_down_in_place() -> None:
    import dns.rrset

    query = dns.message.make_query("example.com", "A", use_edns=0)
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text("example.com.", 300, "IN", "A", "1.2.3.4"))
    reply.authority.append(dns.rrset.from_text("com.", 100, "IN", "NS", "ns.com."))
    packed = reply.to_wire()
    cache = AnswerCache(lambda ip: True)
    cache.put(query.to_wire(), [packed], expires=10.0 + 1, recursive=True, aging=(10.0, 60.0))
    later = cache.answer(query.to_wire(), "127.0.0.1", 12.5)  # past the 1 s refresh
    assert later is not None
    parsed = dns.message.from_wire(later)
    assert parsed.answer[0].ttl == 298 and parsed.authority[0].ttl == 98
    assert parsed.edns == 0  # the OPT record's "TTL" (flags) is left alone
    assert cache.answer(query.to_wire(), "127.0.0.1", 70.5) is None  # the forward cache expired


def test_forwarded_entries_leave_the_fast_tables_when_due_and_come_back_restamped() -> None:
    query = dns.message.make_query("example.com", "A")
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text("example.com.", 300, "IN", "A", "1.2.3.4"))
    plain = query.to_wire()
    cookie = dns.message.make_query("EXAMPLE.com", "A", use_edns=0)
    cookie.use_edns(0, options=[dns.edns.GenericOption(10, b"01234567")])
    cache = AnswerCache(lambda ip: ip == "127.0.0.1")
    cache.put(plain, [reply.to_wire()], expires=11.0, recursive=True, aging=(10.0, 60.0))
    cache.put(cookie.to_wire(), [dns.message.make_response(cookie).to_wire()], 11.0, True,
              aging=(10.0, 60.0))  # fmt: skip

    def ttl(packet: bytes, now: float) -> int | None:
        answered = served(cache, packet, "127.0.0.1", now)
        return None if answered is None else dns.message.from_wire(answered).answer[0].ttl

    assert plain[2:] in cache.tables.exact
    assert ttl(plain, 10.5) == 300
    assert served(cache, plain, "10.1.1.1", 10.5) is None  # not allowed to recurse
    assert served(cache, cookie.to_wire(), "10.1.1.1", 10.5) is None
    assert served(cache, cookie.to_wire(), "127.0.0.1", 10.5) is not None
    cache.sweep(10.9)
    assert plain[2:] in cache.tables.exact
    cache.sweep(11.0)  # due for a refresh: only ``answer`` (which re-stamps) serves it now
    assert plain[2:] not in cache.tables.exact and not cache.tables.normalised
    assert ttl(plain, 12.5) == 298  # re-stamped in place, and back with the new TTLs
    assert plain[2:] in cache.tables.exact and ttl(plain, 12.7) == 298
    cache.sweep(12.6)
    assert plain[2:] in cache.tables.exact
    cache.sweep(13.0)
    assert plain[2:] not in cache.tables.exact
    assert ttl(plain, 70.5) is None  # the forward cache expired: not re-stamped
    cache.sweep(70.6)
    assert plain[2:] not in cache.tables.exact


def test_fast_tables_ask_the_acl_memo_and_leave_undecided_clients_to_answer() -> None:
    acl = Acl(["127.0.0.0/8"])
    cache = AnswerCache(acl.allows, recursion_decided=acl.decided)
    query = dns.message.make_query("example.com", "A").to_wire()
    cache.put(query, [response_for(query, b"F")], 11.0, True, aging=(10.0, 60.0))
    for client, answered in [("127.0.0.2", True), ("127.0.0.2", True), ("10.1.1.1", False),
                           ("10.1.1.1", False)]:  # fmt: skip
        decided_before = acl.decided(client)
        assert (served(cache, query, client, 10.5) is not None) == answered
        assert decided_before in (None, answered) and acl.decided(client) == answered


def test_fast_tables_stay_true_while_a_thread_restamps_and_the_loop_drops() -> None:
    """A UDP thread re-stamps forwarded entries (and puts them back in the fast tables) while
    the event loop puts and invalidates: once every name is invalidated and the thread has
    made a full pass, no fast row is left."""
    import sys
    import threading

    cache = AnswerCache(lambda ip: True)
    queries = [dns.message.make_query(f"n{i}.example", "A") for i in range(20)]
    packets = [q.to_wire() for q in queries]
    replies = []
    for i, q in enumerate(queries):
        reply = dns.message.make_response(q)
        reply.answer.append(dns.rrset.from_text(f"n{i}.example.", 300, "IN", "A", "1.2.3.4"))
        replies.append(reply.to_wire())
    clock = [10.0]
    passes = [0]
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            for packet in packets:
                served(cache, packet, "127.0.0.1", clock[0])
            passes[0] += 1

    def wait_for_passes(count: int) -> None:
        """Until the reader has made ``count`` more passes (it fails the test if it died)."""
        seen, deadline = passes[0], time.monotonic() + 10
        while passes[0] < seen + count:
            assert thread.is_alive() and time.monotonic() < deadline, "the reader stopped"

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(300):
            now = clock[0]
            for i, packet in enumerate(packets):
                cache.put(packet, [replies[i]], now + 1, True, aging=(now, 60.0),
                          depends=(f"n{i}.example.",))  # fmt: skip
            clock[0] += 1.5  # every entry due: out of the fast tables until re-stamped
            cache.sweep(clock[0])
            wait_for_passes(1)
            cache.invalidate({f"n{i}.example." for i in range(20)})
            wait_for_passes(2)  # a full pass after the invalidation
            assert not cache.tables.exact and not cache.tables.normalised
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)


def test_udp_sizes_that_fit_the_same_answer_share_one_entry() -> None:
    """The key holds the UDP size clamped as the answer is fitted (512 to max_udp_size): 4096
    and 8192 share the 1232 entry, 256 the 512 one; a size seen once is then found inline."""
    cache = AnswerCache(lambda ip: True, max_udp_size=1232)

    def ask(size: int, cookie: bool = True) -> bytes:
        message = dns.message.make_query("web.docker", "A", use_edns=0, payload=size)
        if cookie:
            message.use_edns(0, payload=size, options=[dns.edns.GenericOption(10, b"c" * 8)])
        return message.to_wire()

    first = ask(4096)
    depends = ("web.docker.",)
    cache.put(first, [response_for(first, b"big")], float("inf"), False, depends=depends)
    small = ask(256)
    cache.put(small, [response_for(small, b"small")], float("inf"), False, depends=depends)
    assert len(cache) == 2
    for size, marker in [(1232, b"big"), (8192, b"big"), (4096, b"big"), (512, b"small"),
                         (300, b"small"), (700, None)]:  # fmt: skip
        answered = served(cache, ask(size), "127.0.0.1", 1.0)
        assert (answered is None) if marker is None else answered.endswith(marker), size
    packet = ask(8192)
    qend = question_end(packet)
    as_sent = packet[2:qend].lower() + packet[qend : qend + 9]
    assert as_sent != normalised_key(packet)[0] and as_sent in cache.tables.normalised  # inline
    cache.invalidate({"web.docker."})  # every key of both entries goes
    assert not cache.tables.normalised and not cache._entries and len(cache) == 0


def test_ttl_offsets_reject_garbage() -> None:
    from dnsd.wire.codec import ttl_offsets

    assert ttl_offsets(b"\x00" * 5) is None
    good = wire("web.docker", 1)
    assert ttl_offsets(good) == []
    assert ttl_offsets(good + b"\x01") is None


def test_bounded_in_bytes_against_cookie_spraying() -> None:
    """The same big answer asked with a different EDNS cookie each time is a new key: the
    cache must stay within its byte budget however many arrive."""
    cache = AnswerCache(lambda ip: True, max_bytes=1_000_000)
    for i in range(2000):
        message = dns.message.make_query("big.docker", "TXT", use_edns=0)
        message.use_edns(0, options=[dns.edns.GenericOption(10, i.to_bytes(8, "big"))])
        query = message.to_wire()
        cache.put(query, [response_for(query, b"x" * 1200)] * 8, 10.0, False)
        assert cache.bytes <= 1_000_000
    assert 0 < len(cache) < 2000


# --- every cached answer equals a fresh resolve, through store changes (Hypothesis) ----------

POOL = [
    Record("web.docker.", "A", "10.0.0.1", 5, "10.0.0.0/24"),
    Record("web.docker.", "A", "10.1.0.1", 5, "10.1.0.0/24"),
    Record("web.docker.", "A", "10.0.0.1", 5),  # an etcd copy of a local address
    Record("web.docker.", "AAAA", "fd00::1", 5),
    Record("db.docker.", "A", "10.0.0.2", 5),
    Record("x.web.docker.", "A", "10.0.0.3", 5),
    Record("alias.docker.", "CNAME", "web.docker.", 5),
    Record("_http._tcp.web.docker.", "SRV", SrvValue(10, 10, 80, "web.docker."), 5),
    Record("db.docker.", "TXT", ("hello",), 5),
    Record("*.web.docker.", "A", "10.0.0.7", 5),  # RFC 4592 wildcards
    Record("*.docker.", "CNAME", "db.docker.", 5),
    Record("_http._tcp.web.docker.", "SRV", SrvValue(10, 30, 80, "db.docker.", True), 5),
    Record("docker.", "NS", "x.web.docker.", 5),  # apex NS, glue from x.web
]
NAMES = ["web.docker.", "db.docker.", "x.web.docker.", "alias.docker.", "_http._tcp.web.docker.",
         "nx.docker.", "_tcp.web.docker.", "1.0.0.10.in-addr.arpa.", "docker.",
         "q.web.docker.", "a.b.web.docker.", "q.x.web.docker."]  # fmt: skip
QTYPES = ["A", "AAAA", "SRV", "TXT", "CNAME", "PTR", "ANY", "SOA", "NS"]
CLIENTS = ["127.0.0.1", "10.0.0.5", "10.1.0.5"]

change = st.tuples(
    st.sampled_from(["static", "docker", "etcd"]),
    st.sampled_from(["o1", "o2"]),
    st.frozensets(st.sampled_from(POOL), max_size=5),
)
ask = st.tuples(
    st.sampled_from(NAMES),
    st.sampled_from(QTYPES),
    st.booleans(),  # upper-case the name
    st.sampled_from([None, 256, 512, 1232, 4096, 8192]),  # EDNS UDP size, or no EDNS
    st.booleans(),  # a random cookie option
    st.sampled_from(CLIENTS),
)


def _packet(
    name: str, qtype: str, upper: bool, edns: int | None, cookie: bool, ident: int
) -> bytes:
    message = dns.message.make_query(name.upper() if upper else name, qtype)
    message.id = ident
    if edns is not None:
        options = [dns.edns.GenericOption(10, random.randbytes(8))] if cookie else []
        message.use_edns(0, payload=edns, options=options)
    return message.to_wire()


def _comparable(wire: bytes) -> tuple[object, ...]:
    message = dns.message.from_wire(wire)

    def rows(section: list[dns.rrset.RRset]) -> list[str]:
        found = []
        for rrset in section:
            for rdata in rrset:
                text = rdata.to_text()
                if rrset.rdtype == dns.rdatatype.SOA:
                    text = " ".join(text.split()[:2])  # the serial follows every store change
                found.append(f"{rrset.name} {rrset.ttl} {rrset.rdtype} {text}".lower())
        return sorted(found)

    return (message.rcode(), message.flags, [q.to_text() for q in message.question],
            rows(message.answer), rows(message.authority), rows(message.additional))  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(change, ask), min_size=1, max_size=40))
def test_cached_answers_equal_fresh_ones(steps: list[tuple[object, ...]]) -> None:
    store = RecordStore(Admission(["docker."]))
    acl = Acl(["127.0.0.0/8"])
    cache = AnswerCache(acl.allows)
    store.subscribe(cache.invalidate)
    chain = standard_chain(LocalZone(store, ["docker."]), None, acl)
    cached = QueryHandler(chain, Stats(), cache)
    fresh = QueryHandler(chain, Stats(), None)
    for ident, step in enumerate(steps):
        if len(step) == 3:
            source, owner, records = step
            store.replace_owner(source, owner, records)  # type: ignore[arg-type]
            continue
        name, qtype, upper, edns, cookie, client = step
        packet = _packet(name, qtype, upper, edns, cookie, ident)  # type: ignore[arg-type]
        got = served(cache, packet, client, 1.0) or cached.handle(packet, client, udp=True)  # type: ignore[arg-type]
        want = fresh.handle(packet, client, udp=True)  # type: ignore[arg-type]
        assert isinstance(got, bytes) and isinstance(want, bytes)
        assert got[:2] == packet[:2]
        assert _comparable(got) == _comparable(want), (name, qtype, client)


def test_network_aware_entries_are_kept_per_network_not_per_client() -> None:
    store = RecordStore()
    acl = Acl(["127.0.0.0/8"])
    cache = AnswerCache(acl.allows)
    store.subscribe(cache.invalidate)
    handler = QueryHandler(standard_chain(LocalZone(store, ["docker."]), None, acl), Stats(), cache)
    store.replace_owner("docker", "c1", [POOL[0], POOL[1]])  # web on two networks
    store.replace_owner("etcd", "k1", [Record("db.docker.", "A", "10.0.0.2", 5, "10.0.0.0/24")])
    store.replace_owner("etcd", "k2", [Record("db.docker.", "A", "10.0.0.2", 5)])  # its copy
    for i in range(200):
        for name in ("web.docker", "db.docker"):
            packet = dns.message.make_query(name, "A").to_wire()
            client = f"10.0.0.{i + 10}" if i % 2 else f"192.168.{i}.1"
            reply = cache.answer(packet, client, 1.0) or handler.handle(packet, client, True)
            assert isinstance(reply, bytes)
            addresses = {
                r.to_text() for rrset in dns.message.from_wire(reply).answer for r in rrset
            }
            if name == "db.docker":
                assert addresses == {"10.0.0.2"}
            elif i % 2:
                assert addresses == {"10.0.0.1"}  # inside 10.0.0.0/24: only that address
            else:
                assert addresses == {"10.0.0.1", "10.1.0.1"}
    assert len(cache) == 2
    entries = {id(e): e for e in cache._entries.values()}.values()
    per_network = [e for e in entries if e.clients is not None]
    assert len(per_network) == 1 and len(per_network[0].clients) == 2  # two networks, not 200


def test_two_threads_restamping_one_entry_never_leave_the_older_ttls() -> None:
    """Two listener threads (two listen addresses) both find a forwarded entry due: the one
    whose clock read came first (before a second boundary) re-stamps last.  Its TTLs, one
    second too high, must not replace the newer ones (in the fast tables until the next
    stamp)."""
    query = dns.message.make_query("example.com", "A")
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text("example.com.", 300, "IN", "A", "1.2.3.4"))
    packet = query.to_wire()
    cache = AnswerCache(lambda ip: True)
    cache.put(packet, [reply.to_wire()], expires=1.0, recursive=True, aging=(0.0, 60.0))
    cache.sweep(5.5)  # due: out of the fast tables
    entry = cache._entries[normalised_key(packet)[0]]  # type: ignore[index]
    assert cache._restamp(entry, 6.01)  # the later thread wins the race to the stamp
    assert cache._restamp(entry, 5.99)  # the earlier one stamps after it
    answered = served(cache, packet, "127.0.0.1", 6.2)
    assert answered is not None and dns.message.from_wire(answered).answer[0].ttl == 294
    tail = cache.tables.exact[packet[2:]][0]  # what the fast table serves until the next stamp
    assert dns.message.from_wire(packet[:2] + tail).answer[0].ttl == 294


_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
_edns = st.one_of(st.none(), st.integers(min_value=0, max_value=65535))
_cookie = st.one_of(st.none(), st.sampled_from([8, 16, 24, 40]))


def _asked(name: str, rdtype: str, edns: int | None, cookie: int | None, ident: int) -> bytes:
    options = [dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"c" * cookie)] if cookie else []
    if edns is None:
        message = dns.message.make_query(name, rdtype)
    else:
        message = dns.message.make_query(name, rdtype, use_edns=0, payload=edns, options=options)
    message.id = ident
    return message.to_wire()


@settings(max_examples=300, deadline=None)
@given(
    labels=st.lists(_label, min_size=1, max_size=3),
    stored_case=st.integers(min_value=0, max_value=2**36 - 1),
    asked_case=st.integers(min_value=0, max_value=2**36 - 1),
    rdtype=st.sampled_from(["A", "AAAA", "TXT", "SRV"]),
    stored_edns=_edns,
    asked_edns=_edns,
    cookie=_cookie,
    ident=st.integers(min_value=0, max_value=65535),
)
def test_every_lookup_path_builds_the_key_the_store_builds(
    labels: list[str], stored_case: int, asked_case: int, rdtype: str,
    stored_edns: int | None, asked_edns: int | None, cookie: int | None, ident: int,
) -> None:  # fmt: skip
    """One key for storing and finding (``answer_key.normalised_key``), whatever the letter
    case, the EDNS size offered (sizes fitted to the same reply size share an entry) and the
    options (a cookie) of the question: the listener thread's inline lookups (exact bytes,
    normalised key) and ``AnswerCache.answer`` find what ``put`` stored exactly when the keys
    are equal, answer with the asker's ID and echo its spelling of the name."""

    def spelled(mask: int) -> str:
        text = ".".join(labels) + ".docker."
        return "".join(c.upper() if mask >> (i % 36) & 1 else c for i, c in enumerate(text))

    stored = _asked(spelled(stored_case), rdtype, stored_edns, None, 1)
    asked = _asked(
        spelled(asked_case), rdtype, asked_edns, cookie if asked_edns is not None else None, ident
    )
    cache = AnswerCache(lambda _ip: True)
    reply = response_for(stored, b"")
    cache.put(stored, [reply], float("inf"), False)
    same_key = normalised_key(stored)[0] == normalised_key(asked)[0]
    for path in ("listener", "answer"):
        if path == "listener":
            got = served(cache, asked, "10.0.0.1", 1.0)
        else:
            got = cache.answer(asked, "10.0.0.1", 1.0)
        if not same_key:
            assert got is None, path
            continue
        assert got is not None, path
        end = question_end(asked)
        assert got[:2] == asked[:2] and got[12:end] == asked[12:end], path
