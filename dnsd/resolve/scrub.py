"""What of an upstream reply may be passed on: the reply matched against the question asked
(``matching_reply``), then only the records for the name asked and its CNAME/DNAME chain and
an SOA above them (``scrub``), never a record at a name in dnsd's own zones; and the
``Answer`` made of what is left (``to_answer``).  Pure functions over dnslib records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dnslib import QTYPE, DNSRecord

from dnsd.names import in_zone, text_of
from dnsd.resolve.answer import Answer


def matching_reply(
    data: bytes, ident: int, qname: str, qtype: int, qclass: int
) -> DNSRecord | None:
    try:
        reply = DNSRecord.parse(data)
    except Exception:
        return None
    if reply.header.id != ident or not reply.header.qr or len(reply.questions) != 1:
        return None
    question = reply.q
    if text_of(question.qname).lower() != qname or question.qtype != qtype:
        return None
    return reply if question.qclass == qclass else None


@dataclass(slots=True)
class Scrubbed:
    """What of an upstream reply may be passed on."""

    answer: list[Any]
    authority: list[Any]
    dropped: int
    # The chain's first name inside dnsd's own zones (a CNAME pointing in): the upstream's
    # word ends there, and the rest of the answer is the local zone's.
    enters: str | None = None


def scrub(
    reply: DNSRecord, qname: str, qtype: int, owned: Callable[[str], bool] = lambda _: False
) -> Scrubbed:
    """The records for the question asked and its CNAME/DNAME chain, and an SOA above them;
    never a record at a name ``owned`` (dnsd's own zones): an upstream has no say there, so a
    chain that enters them is cut where it enters."""
    chain = {qname}
    enters: str | None = None
    owners = [text_of(rr.rname).lower() for rr in reply.rr]
    keep = [False] * len(reply.rr)
    grew = True
    while grew:  # CNAMEs may come in any order: follow the chain until it stops growing
        grew = False
        for index, rr in enumerate(reply.rr):
            owner = owners[index]
            if keep[index] or owned(owner):
                continue
            if rr.rtype == QTYPE.DNAME:
                keep[index] = any(in_zone(n, owner) and n != owner for n in chain)
                continue
            if owner not in chain:
                continue
            keep[index] = True
            if rr.rtype == QTYPE.CNAME and qtype != QTYPE.CNAME:
                target = text_of(rr.rdata.label).lower()
                if owned(target):
                    enters = enters or target
                    continue
                chain.add(target)
                grew = True
    kept = [rr for rr, wanted in zip(reply.rr, keep, strict=True) if wanted]
    authority = [
        rr
        for rr in reply.auth
        if rr.rtype == QTYPE.SOA
        and not owned(text_of(rr.rname).lower())
        and any(in_zone(n, text_of(rr.rname).lower()) for n in chain)
    ]
    additional = [rr for rr in reply.ar if rr.rtype != QTYPE.OPT]
    dropped = len(reply.rr) - len(kept) + len(reply.auth) - len(authority) + len(additional)
    return Scrubbed(kept, authority, dropped, enters)


def to_answer(
    reply: DNSRecord, qname: str, qtype: int, size: int, owned: Callable[[str], bool]
) -> tuple[Answer, int]:
    scrubbed = scrub(reply, qname, qtype, owned)
    # Each upstream RR is its own "RRset" so rotation never reorders a CNAME chain.
    answer = Answer(
        rcode=reply.header.rcode,
        authoritative=False,
        rrsets=[[rr] for rr in scrubbed.answer],
        authority=scrubbed.authority,
        recursive=True,
        wire_size=size,
        enters=scrubbed.enters,
    )
    return answer, scrubbed.dropped
