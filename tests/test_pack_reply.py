"""The miss path's packer gives exactly the bytes dnslib's ``DNSRecord.pack`` gives."""

from __future__ import annotations

from dnslib import (
    AAAA,
    CNAME,
    EDNS0,
    MX,
    PTR,
    QTYPE,
    RR,
    SOA,
    SRV,
    TXT,
    A,
    DNSHeader,
    DNSQuestion,
    DNSRecord,
)  # fmt: skip
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsd.wire.message import pack_reply

POOL = [
    RR("web.docker.", QTYPE.A, ttl=5, rdata=A("10.0.0.1")),
    RR("Web.Docker.", QTYPE.A, ttl=5, rdata=A("10.0.0.2")),
    RR("web.docker.", QTYPE.AAAA, ttl=5, rdata=AAAA("fd00::1")),
    RR("alias.docker.", QTYPE.CNAME, ttl=5, rdata=CNAME("web.docker.")),
    RR("_http._tcp.web.docker.", QTYPE.SRV, ttl=5, rdata=SRV(10, 20, 80, "web.docker.")),
    RR("docker.", QTYPE.SOA, ttl=30, rdata=SOA("ns.dns.docker.", "hostmaster.docker.",
                                               (7, 3600, 600, 86400, 30))),
    RR("db.docker.", QTYPE.TXT, ttl=5, rdata=TXT(["hello", "world"])),
    RR("docker.", QTYPE.MX, ttl=5, rdata=MX("mail.example.", 10)),
    RR("1.0.0.10.in-addr.arpa.", QTYPE.PTR, ttl=5, rdata=PTR("web.docker.")),
]  # fmt: skip
QUESTIONS = ["web.docker.", "WEB.docker.", "alias.docker.", "nx.docker.", "docker.", "example."]

section = st.lists(st.sampled_from(POOL), max_size=5)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 0xFFFF),
    st.sampled_from(QUESTIONS),
    st.sampled_from([QTYPE.A, QTYPE.SRV, QTYPE.ANY]),
    st.booleans(),  # AA
    st.booleans(),  # TC
    st.booleans(),  # RD
    st.booleans(),  # RA
    st.integers(0, 5),  # rcode
    section,
    section,
    section,
    st.sampled_from([None, 512, 1232, 4096]),  # the OPT record's UDP size
)
def test_pack_reply_equals_dnslib(
    ident: int, qname: str, qtype: int, aa: bool, tc: bool, rd: bool, ra: bool, rcode: int,
    answer: list[RR], authority: list[RR], additional: list[RR], edns: int | None,
) -> None:  # fmt: skip
    question = DNSQuestion(qname, qtype)
    header = DNSHeader(id=ident, qr=1, aa=aa, tc=tc, rd=rd, ra=ra, rcode=rcode)
    opt = None if edns is None else EDNS0(udp_len=edns)
    optional = [] if opt is None else [opt]
    reply = DNSRecord(header, q=question, rr=answer, auth=authority, ar=additional + optional)
    flags = 0x8000 | aa << 10 | tc << 9 | rd << 8 | ra << 7 | rcode
    packed = pack_reply(ident, flags, question, answer, authority, additional, opt)
    assert packed == bytes(reply.pack())
