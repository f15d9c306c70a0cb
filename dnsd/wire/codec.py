"""Byte-level helpers for DNS messages that must not build dnslib objects.

Used by the hot path (question boundaries, the packed-answer key) and for answers to packets that
dnslib cannot parse (FORMERR with the readable header, NOTIMP).  Every function is bounds-checked
and returns ``None``/``-1`` instead of raising on short or malformed input.  The question's end is
found here only: ``question_end`` walks the labels; ``plain_shape`` takes the first zero byte, and
a packet is cached only when the two agree (the packed-answer cache's hot path repeats that
first-zero-byte search inline, on purpose: a call per packet costs more than the search).
"""

from __future__ import annotations

import struct

from dnsd.protocol import (
    COOKIE_LENGTHS,
    EDNS_OPTION_COOKIE,
    FLAG_QR,
    FLAG_RD,
    HEADER_LEN,
    MAX_NAME_WIRE_BYTES,
    OPCODE_MASK,
)

DEFAULT_MAX_UDP_SIZE = 1232  # the largest UDP reply dnsd sends by default (DNS flag day 2020)

_HEADER = struct.Struct("!HHHHHH")


def question_end(data: bytes) -> int:
    """Index just past QTYPE/QCLASS of the first question, or -1 if it is not well-formed.

    Only plain labels are allowed (no compression pointers in a question).
    """
    size = len(data)
    pos = HEADER_LEN
    while pos < size:
        length = data[pos]
        if length == 0:
            end = pos + 5
            return end if end <= size and end - HEADER_LEN <= MAX_NAME_WIRE_BYTES + 4 else -1
        if length > 63:
            return -1
        pos += length + 1
    return -1


def error_response(data: bytes, rcode: int, echo_question: bool = False) -> bytes | None:
    """A bare reply to ``data`` with ``rcode``: same ID, opcode and RD; no records.

    With ``echo_question`` the first question is copied when it is well-formed.  Returns None
    when not even the header is readable (the caller drops and counts the packet).
    """
    if len(data) < HEADER_LEN:
        return None
    ident, flags, _, _, _, _ = _HEADER.unpack_from(data)
    reply_flags = FLAG_QR | (flags & (OPCODE_MASK | FLAG_RD)) | (rcode & 0x0F)
    question = b""
    if echo_question:
        end = question_end(data)
        if end > 0:
            question = data[HEADER_LEN:end]
    return _HEADER.pack(ident, reply_flags, 1 if question else 0, 0, 0, 0) + question


def _skip_name(data: bytes, pos: int) -> int:
    """Index just past the (possibly compressed) name at ``pos``; -1 if malformed."""
    size = len(data)
    while pos < size:
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2 if pos + 2 <= size else -1
        if length > 63:
            return -1
        pos += length + 1
    return -1


def ttl_offsets(data: bytes) -> list[int] | None:
    """Offsets of every resource record's TTL field (the OPT pseudo-record excluded), so a
    packed answer's TTLs can be counted down in place; None if ``data`` is malformed."""
    if len(data) < HEADER_LEN:
        return None
    _, _, qd, an, ns, ar = _HEADER.unpack_from(data)
    pos = HEADER_LEN
    for _ in range(qd):
        pos = _skip_name(data, pos)
        if pos < 0:
            return None
        pos += 4
    offsets = []
    for _ in range(an + ns + ar):
        pos = _skip_name(data, pos)
        if pos < 0 or pos + 10 > len(data):
            return None
        rtype, _, _, rdlength = struct.unpack_from("!HHIH", data, pos)
        if rtype != 41:
            offsets.append(pos + 4)
        pos += 10 + rdlength
    return offsets if pos == len(data) else None


_ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00"  # QDCOUNT 1, ANCOUNT 0, NSCOUNT 0
_NO_ADDITIONAL = b"\x00\x00"
_ONE_ADDITIONAL = b"\x00\x01"
_OPT_HEAD = b"\x00\x00\x29"  # root owner, type OPT
OPT_FIXED_BYTES = 9  # owner, type, class (UDP size), TTL (extended rcode, version, DO): no options


def plain_shape(data: bytes) -> tuple[int, bool]:
    """(end of the question, whether EDNS options follow) when ``data`` is a plain query:
    one question, no answer or authority records, no additional record but one version-0 OPT;
    (-1, False) otherwise.  The question's end is the first zero byte after the header."""
    end = data.find(b"\x00", HEADER_LEN)
    size = len(data)
    qend = end + 5
    if end < 0 or qend > size or data[4:10] != _ONE_QUESTION:
        return -1, False
    additional = data[10:12]
    if additional == _NO_ADDITIONAL:
        return (qend, False) if qend == size else (-1, False)
    if additional != _ONE_ADDITIONAL or data[qend : qend + 3] != _OPT_HEAD or qend + 11 > size:
        return -1, False
    options = int.from_bytes(data[qend + 9 : qend + 11], "big")
    if qend + 11 + options != size or data[qend + 6] != 0:  # EDNS version 0 only
        return -1, False
    return qend, options > 0


def opt_well_formed(data: bytes, opt_at: int) -> bool:
    """Whether the OPT record at ``opt_at``, the last thing in ``data``, is well formed: its
    RDATA length is what follows, and its options are (``options_well_formed``)."""
    start = opt_at + OPT_FIXED_BYTES + 2
    if len(data) < start or int.from_bytes(data[start - 2 : start], "big") != len(data) - start:
        return False
    return options_well_formed(data, start)


def options_well_formed(data: bytes, start: int) -> bool:
    """Whether the EDNS options from ``start`` to the end of ``data`` (the OPT record's RDATA)
    are well formed: each option's length inside the RDATA, a COOKIE of a valid length."""
    size = len(data)
    while start < size:
        if start + 4 > size:
            return False
        code = (data[start] << 8) | data[start + 1]
        length = (data[start + 2] << 8) | data[start + 3]
        start += 4 + length
        if start > size or (code == EDNS_OPTION_COOKIE and length not in COOKIE_LENGTHS):
            return False
    return True


def slip(query: bytes) -> bytes | None:
    """A TC=1 reply to ``query`` made from its bytes (its ID, opcode, RD and question): "ask
    again over TCP"; None when it is not a query with a readable header."""
    if len(query) < HEADER_LEN or query[2] & 0x80:
        return None
    end = question_end(query)
    flags = bytes((0x82 | (query[2] & 0x79), 0))  # QR, TC; the opcode and RD echoed
    if end < 0 or query[4:6] != b"\x00\x01":
        return query[:2] + flags + b"\x00" * 8
    return query[:2] + flags + b"\x00\x01\x00\x00\x00\x00\x00\x00" + query[HEADER_LEN:end]


def truncated(response: bytes) -> bytes:
    """The header and question of ``response`` with TC=1 and no records (a slip)."""
    end = question_end(response)
    flags = response[2] | 0x02  # TC
    if end < 0:
        return response[:2] + bytes([flags, response[3]]) + b"\x00" * 8
    return (
        response[:2]
        + bytes([flags, response[3]])
        + b"\x00\x01\x00\x00\x00\x00\x00\x00"
        + response[HEADER_LEN:end]
    )
