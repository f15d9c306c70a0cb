"""Hostile packets: random and mutated bytes never raise, never stall, never stop answers."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import dns.message
import pytest
from conftest import Dnsd, query, rcode
from dnslib import DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnsd.record import Record
from dnsd.records import RecordStore
from dnsd.resolve.acl import Acl
from dnsd.resolve.chain import standard_chain
from dnsd.resolve.local import LocalZone
from dnsd.stats import Stats
from dnsd.wire.answer_cache import AnswerCache
from dnsd.wire.codec import question_end
from dnsd.wire.message import parse_plain
from dnsd.wire.query import QueryHandler

VALID = [
    dns.message.make_query(name, rdtype).to_wire()
    for name, rdtype in [("web.docker", "A"), ("x.docker", "SRV"), ("web.docker", "ANY")]
] + [dns.message.make_query("web.docker", "A", use_edns=0, payload=700).to_wire()]


def mutate(data: bytes, flips: list[tuple[int, int]], cut: int) -> bytes:
    buf = bytearray(data)
    for pos, value in flips:
        buf[pos % len(buf)] = value
    return bytes(buf[: max(cut, 0)] if cut < len(buf) else buf)


packets = st.one_of(
    st.binary(max_size=600),
    st.builds(
        mutate,
        st.sampled_from(VALID),
        st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
        st.integers(0, 80),
    ),
)


def make_handler() -> tuple[QueryHandler, AnswerCache]:
    store = RecordStore()
    store.replace_owner("static", "t", [Record("web.docker.", "A", "10.0.0.1", 5)])
    acl = Acl(["127.0.0.0/8"])
    cache = AnswerCache(acl.allows)
    chain = standard_chain(LocalZone(store, ["docker."]), None, acl)
    return QueryHandler(chain, Stats(), cache), cache


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packets)
def test_handler_never_raises(packet: bytes) -> None:
    handler, cache = make_handler()
    result = handler.handle(packet, "127.0.0.1", udp=True)
    assert result is None or isinstance(result, bytes)  # no forwarding: never a coroutine
    if isinstance(result, bytes):
        assert result[:2] == packet[:2]  # same ID
        assert result[2] & 0x80  # QR set
        again = cache.answer(packet, "127.0.0.1", 0.0)
        assert again is None or again[:2] == packet[:2]


@pytest.mark.slow
def test_running_server_survives_garbage(zone_dnsd_for_fuzz: Dnsd) -> None:
    port = zone_dnsd_for_fuzz.port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:

        @settings(max_examples=600, deadline=None)
        @given(packets)
        def blast(packet: bytes) -> None:
            sock.sendto(packet, ("127.0.0.1", port))

        blast()
    reply = query(port, "web.docker", "A")
    assert rcode(reply) == "NOERROR"
    assert zone_dnsd_for_fuzz.proc.poll() is None
    assert "Traceback" not in zone_dnsd_for_fuzz.log()


@pytest.fixture
def zone_dnsd_for_fuzz(tmp_path: Path, dnsd_factory) -> Dnsd:  # type: ignore[no-untyped-def]
    (tmp_path / "hosts").write_text("10.0.0.1 web\n")
    return dnsd_factory("--no-forward", config='[static]\nhosts = ["hosts"]\n')


labels = st.lists(
    st.binary(min_size=1, max_size=12).filter(lambda b: b"\x00" not in b), min_size=1, max_size=5
)


@settings(max_examples=500, deadline=None)
@given(labels, st.integers(1, 65535), st.sampled_from([1, 3, 255]), st.integers(0, 65535),
       st.booleans(), st.one_of(st.none(), st.integers(0, 65535)))  # fmt: skip
def test_plain_query_parse_matches_dnslib(
    name: list[bytes], qtype: int, qclass: int, ident: int, rd: bool, edns: int | None
) -> None:
    wire = b"".join(bytes([len(label)]) + label for label in name) + b"\x00"
    header = struct.pack(
        "!HHHHHH", ident, 0x0100 if rd else 0, 1, 0, 0, 1 if edns is not None else 0
    )
    packet = header + wire + struct.pack("!HH", qtype, qclass)
    if edns is not None:
        packet += b"\x00\x00\x29" + struct.pack("!HIH", edns, 0, 0)
    plain = parse_plain(packet, question_end(packet))
    if plain is None:  # only names dnslib must judge (bytes outside ASCII) leave the fast path
        assert not all(label.isascii() for label in name)
        return
    reference = DNSRecord.parse(packet)
    query, size = plain
    assert (str(query.q.qname), query.q.qtype, query.q.qclass) == (
        str(reference.q.qname),
        reference.q.qtype,
        reference.q.qclass,
    )
    assert (query.header.id, bool(query.header.rd)) == (
        reference.header.id,
        bool(reference.header.rd),
    )
    assert size == (reference.ar[0].rclass if edns is not None else None)
