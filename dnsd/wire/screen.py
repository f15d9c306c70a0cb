"""Packets that are not a question dnsd can resolve, answered from their bytes alone.

Run on the UDP listener thread before a miss is queued for the event loop, so a flood of
malformed or unsupported packets is answered (FORMERR, NOTIMP) or dropped at the listener's
speed and never takes the loop's time or the miss queue's room from real questions.
``QueryHandler`` starts with the same screen, so TCP gets the same verdicts.
"""

from __future__ import annotations

from typing import Final

from dnsd.protocol import HEADER_LEN, RCODE_FORMERR, RCODE_NOTIMP
from dnsd.stats import FORMERR, NOTIMP, Stats
from dnsd.wire.codec import error_response, question_end

PASS: Final = b""  # a question for the resolver (an empty reply is never sent)


def screened(data: bytes, stats: Stats) -> bytes | None:
    """``PASS``, a reply to send (FORMERR/NOTIMP), or None to drop (counted)."""
    if len(data) < HEADER_LEN:
        stats.drop("short")
        return None
    if data[2] & 0x80:
        stats.drop("not a query")
        return None
    if question_end(data) < 0:  # a label over 63 bytes, a pointer, a name over 255 bytes
        stats.refused_packets.add(FORMERR)
        return error_response(data, RCODE_FORMERR)
    questions = data[4] << 8 | data[5]
    if data[2] & 0x78:  # an opcode other than QUERY
        stats.refused_packets.add(NOTIMP)
        return error_response(data, RCODE_NOTIMP, echo_question=questions == 1)
    if questions != 1:
        stats.refused_packets.add(FORMERR)
        return error_response(data, RCODE_FORMERR)
    return PASS
