"""Reading a query and writing a reply: the one place the miss path turns bytes into what it
needs and back (the hot paths only look packed answers up by key: ``answer_key``, and the
listener's inline search for the question's end, ``codec``).

``read_query`` reads a plain query (opcode 0, one well-formed question, perhaps an OPT
record: nearly every query) straight from the bytes, and anything else with dnslib; it says
what is wrong with a query that cannot be answered as asked (``Refusal``: FORMERR, NOTIMP or
BADVERS, decided here and, for what the bytes alone show, in ``screen``).  ``pack_reply``
packs an answer as dnslib would, without building a ``DNSRecord``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dnslib import QTYPE, DNSLabel, DNSQuestion, DNSRecord
from dnslib.label import DNSBuffer

from dnsd.protocol import COOKIE_LENGTHS, EDNS_OPTION_COOKIE, HEADER_LEN
from dnsd.wire.codec import opt_well_formed, plain_shape, question_end

_QUESTION_TAIL = struct.Struct("!HH")

FORMERR_ECHO = "formerr, question echoed"
FORMERR_BARE = "formerr"
NOTIMP_ECHO = "notimp"
BADVERS = "badvers"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a query is not answered as asked: ``FORMERR_ECHO``/``FORMERR_BARE`` (the question
    echoed or not), ``NOTIMP_ECHO``, ``BADVERS`` (``query`` then holds the parsed query, for
    the BADVERS reply)."""

    kind: str
    query: Any = None


def read_query(data: bytes) -> tuple[Any, int | None] | Refusal:
    """(query, EDNS UDP size or None) for a query the resolver may answer (``query`` has the
    shape of a dnslib ``DNSRecord``: ``header.id``, ``header.rd``, ``q``), else a
    ``Refusal``.  The question types are judged by the caller."""
    qend = question_end(data)
    plain = parse_plain(data, qend)
    if plain is not None:  # the common case, read straight from the bytes
        if plain[1] is not None and not opt_well_formed(data, qend):  # a bad option
            return Refusal(FORMERR_ECHO)
        return plain
    try:
        query = DNSRecord.parse(data)
    except Exception:  # dnslib raises more than DNSError on hostile input
        return Refusal(FORMERR_BARE)
    if query.header.opcode != 0:
        return Refusal(NOTIMP_ECHO)
    options = [rr for rr in query.ar if rr.rtype == QTYPE.OPT]
    if len(query.questions) != 1 or len(options) > 1:
        return Refusal(FORMERR_BARE)
    if options and (options[0].ttl >> 16) & 0xFF != 0:
        return Refusal(BADVERS, query)
    if options and not all(_option_well_formed(o) for o in options[0].rdata):
        return Refusal(FORMERR_ECHO)
    return query, options[0].rclass if options else None


def pack_reply(
    ident: int,
    flags: int,
    question: DNSQuestion,
    answer: Sequence[Any],
    authority: Sequence[Any],
    additional: Sequence[Any],
    opt: Any = None,
) -> bytes:
    """A reply packed as ``DNSRecord.pack`` does (header, question, sections, an OPT record
    last when given), with one ``DNSBuffer`` and no ``DNSRecord``/``DNSHeader`` objects."""
    buffer = DNSBuffer()
    extra = 0 if opt is None else 1
    buffer.pack("!HHHHHH", ident, flags, 1, len(answer), len(authority), len(additional) + extra)
    question.pack(buffer)
    for rr in answer:
        rr.pack(buffer)
    for rr in authority:
        rr.pack(buffer)
    for rr in additional:
        rr.pack(buffer)
    if opt is not None:
        opt.pack(buffer)
    return bytes(buffer.data)


class _Header:
    __slots__ = ("id", "rd")

    def __init__(self, ident: int, rd: int) -> None:
        self.id = ident
        self.rd = rd


class _Plain:
    """What the miss path needs of a plain query (header ID and RD, the question), in the
    shape of a dnslib ``DNSRecord``."""

    __slots__ = ("header", "q")

    def __init__(self, header: _Header, question: DNSQuestion) -> None:
        self.header = header
        self.q = question


def _option_well_formed(option: Any) -> bool:
    """A dnslib ``EDNSOption`` of a length its code allows (a COOKIE: RFC 7873 4)."""
    return option.code != EDNS_OPTION_COOKIE or len(option.data) in COOKIE_LENGTHS


def parse_plain(data: bytes, qend: int) -> tuple[Any, int | None] | None:
    """(query, EDNS UDP size or None) for a plain query (``plain_shape``) of opcode 0 whose
    well-formed question ends at ``qend``; None for anything else (dnslib parses it)."""
    if plain_shape(data)[0] != qend or data[2] & 0x78:
        return None
    labels = []
    pos = HEADER_LEN
    while data[pos]:
        length = data[pos]
        label = data[pos + 1 : pos + 1 + length]
        if not label.isascii():  # dnslib's rules for other bytes apply (it may refuse them)
            return None
        labels.append(label)
        pos += length + 1
    qtype, qclass = _QUESTION_TAIL.unpack_from(data, qend - 4)
    header = _Header((data[0] << 8) | data[1], data[2] & 0x01)
    edns_size = int.from_bytes(data[qend + 3 : qend + 5], "big") if data[11] else None
    return _Plain(header, DNSQuestion(DNSLabel(labels), qtype, qclass)), edns_size
