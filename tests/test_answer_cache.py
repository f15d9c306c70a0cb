"""The packed-answer cache: ID patched, case echoed, rotations, expiry, recursion check."""

from __future__ import annotations

import dns.edns
import dns.message

from dnsd.wire.answer_cache import AnswerCache
from dnsd.wire.codec import error_response, question_end


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
        cache.put(query, [response_for(query, b"x")], 1e9, False)
    assert len(cache) <= 10


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
