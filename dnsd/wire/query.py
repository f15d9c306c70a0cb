"""The miss path: one query packet in, one response packet out (or None: drop).

Reads the query (``message.read_query``, after ``screen``, which answers what can be answered
from the bytes alone — FORMERR for an unreadable question, NOTIMP for another opcode, a drop —
on the listener thread and here alike; ``read_query`` refuses a bad OPT record or option, or
EDNS of a later version; question types never served are refused here: NOTIMP for zone
transfers, FORMERR for meta types), asks the resolver chain, and packs the answer
(``message.pack_reply``): RRsets rotated, EDNS0 echoed, TC=1 when a UDP answer does not fit
the client's size.  Cacheable answers are put in the packed-answer cache so the next identical
question takes a hot path.  Knows nothing about sockets.
"""

from __future__ import annotations

import logging
import math
import struct
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from dnslib import EDNS0, QTYPE, RCODE, DNSHeader, DNSRecord

from dnsd.logs import Throttled
from dnsd.names import text_of
from dnsd.protocol import (
    CLASSIC_UDP_SIZE,
    EDNS_BADVERS,
    FLAG_AA,
    FLAG_QR,
    FLAG_RA,
    FLAG_RD,
    FLAG_TC,
    MAX_TCP_SIZE,
    MIN_RECORD_BYTES,
    RCODE_FORMERR,
    RCODE_NOTIMP,
    RCODE_SERVFAIL,
)
from dnsd.resolve.answer import Answer
from dnsd.resolve.chain import ResolverChain
from dnsd.stats import FORMERR, NOTIMP, Stats
from dnsd.wire.answer_cache import AnswerCache
from dnsd.wire.answer_entries import FORWARDED_REFRESH_S
from dnsd.wire.answer_key import udp_reply_limit
from dnsd.wire.codec import (
    DEFAULT_MAX_UDP_SIZE,
    error_response,
)
from dnsd.wire.message import (
    BADVERS,
    FORMERR_ECHO,
    NOTIMP_ECHO,
    Refusal,
    pack_reply,
    read_query,
)
from dnsd.wire.query_log import QueryLog
from dnsd.wire.screen import PASS, screened

logger = logging.getLogger(__name__)
throttled = Throttled(logger)

MAX_ROTATIONS = 8

# Question types that can never be asked (RFC 6895: meta types) and ones dnsd does not serve.
MALFORMED_QTYPES = frozenset({0, 41, 250})  # qtype 0, OPT, TSIG
UNSERVED_QTYPES = frozenset({249, 251, 252, 253, 254})  # TKEY, IXFR, AXFR, MAILB, MAILA
# Metric label values are a fixed set: anything else is "other" (bounded series, RFC 6895).
LABELLED_QTYPES = frozenset(
    {"A", "NS", "CNAME", "SOA", "PTR", "HINFO", "MX", "TXT", "AAAA", "SRV", "NAPTR", "DS",
     "RRSIG", "NSEC", "DNSKEY", "TLSA", "SVCB", "HTTPS", "CAA", "ANY", "AXFR", "IXFR"}
)  # fmt: skip
LABELLED_RCODES = frozenset({"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"})


def qtype_label(qtype: int) -> str:
    name = QTYPE.get(qtype, "")
    return name if name in LABELLED_QTYPES else "other"


def rcode_label(rcode: int) -> str:
    name = RCODE.get(rcode, "")
    return name if name in LABELLED_RCODES else "other"


Response = bytes | None | Coroutine[Any, Any, bytes | None]
_QUESTION_TAIL = struct.Struct("!HH")
_COUNTS = struct.Struct("!HHH")  # a header's answer, authority and additional counts


class QueryHandler:
    def __init__(
        self,
        chain: ResolverChain,
        stats: Stats,
        answer_cache: AnswerCache | None = None,
        max_udp_size: int = DEFAULT_MAX_UDP_SIZE,
        recursion_available: bool = True,
        clock: Callable[[], float] = time.monotonic,
        query_log: QueryLog | None = None,
    ) -> None:
        self._query_log = query_log
        self._chain = chain
        self._stats = stats
        self._answer_cache = answer_cache
        self._max_udp_size = max(max_udp_size, CLASSIC_UDP_SIZE)
        self._opt = EDNS0(udp_len=self._max_udp_size)  # the OPT record of every EDNS reply
        self._recursion_available = recursion_available
        self._clock = clock
        self._turn = 0
        # Where the answer being made comes from, for the query log: "upstream" once
        # ``_respond`` packs an answer that went through forwarding (a synchronous call on
        # the event loop thread, so no other query interleaves), else "local".
        self._answered_by = "local"

    def handle(self, data: bytes, client_ip: str, udp: bool) -> Response:
        """A response, None to drop, or a coroutine giving one (the question went upstream)."""
        started = self._clock()
        self._answered_by = "local"
        result = self._handle(data, client_ip, udp)
        if isinstance(result, bytes):
            self._stats.durations[(_proto(udp), "resolver")].observe(self._clock() - started)
        if self._query_log is not None:
            return self._logged(result, data, client_ip)
        return result

    def _logged(self, result: Response, data: bytes, client_ip: str) -> Response:
        assert self._query_log is not None
        started = self._query_log.clock()
        if isinstance(result, bytes):
            self._query_log.log(client_ip, data, result, self._answered_by, started)
            return result
        if result is None:
            return None
        return self._logged_later(result, data, client_ip, started)

    async def _logged_later(
        self, pending: Awaitable[bytes | None], data: bytes, client_ip: str, started: float
    ) -> bytes | None:
        assert self._query_log is not None
        response = await pending
        if response is not None:
            self._query_log.log(client_ip, data, response, "upstream", started)
        return response

    def _handle(self, data: bytes, client_ip: str, udp: bool) -> Response:
        verdict = screened(data, self._stats)  # as the UDP listener thread does for misses
        if verdict != PASS:
            return verdict
        parsed = read_query(data)
        if isinstance(parsed, Refusal):
            return self._refused(data, parsed)
        query, edns_size = parsed
        edns = edns_size is not None
        if query.q.qtype in MALFORMED_QTYPES:
            self._stats.refused_packets.add(FORMERR)
            return error_response(data, RCODE_FORMERR, echo_question=True)
        if query.q.qtype in UNSERVED_QTYPES:  # zone transfers, TKEY, MAILA/MAILB: never upstream
            self._stats.refused_packets.add(NOTIMP)
            return error_response(data, RCODE_NOTIMP, echo_question=True)
        # What a UDP reply may hold: the limit over UDP, and the packed answers cached (for
        # either transport) are fitted to it.
        udp_limit = CLASSIC_UDP_SIZE
        if edns_size is not None:
            udp_limit = udp_reply_limit(edns_size, self._max_udp_size)
        question = query.q
        spelled = text_of(question.qname)
        if udp:  # a question the packed-answer cache did not have (not TCP, not a drop)
            self._stats.queries_slow += 1
        result = self._chain.resolve(
            spelled.lower(), question.qtype, question.qclass, spelled, client_ip
        )
        if isinstance(result, Answer):
            return self._respond(data, query, result, edns, udp_limit, udp, client_ip)
        return self._respond_later(data, query, result, edns, udp_limit, udp, client_ip)

    async def _respond_later(
        self,
        data: bytes,
        query: DNSRecord,
        pending: Awaitable[Answer],
        edns: bool,
        udp_limit: int,
        udp: bool,
        client_ip: str,
    ) -> bytes | None:
        started = self._clock()
        try:
            answer = await pending
        except Exception as exc:
            throttled.warning("resolve", "resolving %s failed: %r", query.q.qname, exc)
            answer = Answer(RCODE_SERVFAIL)
        response = self._respond(data, query, answer, edns, udp_limit, udp, client_ip)
        self._stats.durations[(_proto(udp), "resolver")].observe(self._clock() - started)
        return response

    def _respond(
        self,
        data: bytes,
        query: DNSRecord,
        answer: Answer,
        edns: bool,
        udp_limit: int,
        udp: bool,
        client_ip: str,
    ) -> bytes | None:
        """The reply; a cacheable answer is packed for UDP and remembered (TCP questions fill
        the cache too), and a TCP asker gets the UDP packing only when it is the whole answer
        (nothing cut to fit)."""
        self._turn += 1
        if answer.recursive:
            self._answered_by = "upstream"
        zone = self._chain.zone_of(text_of(query.q.qname).lower())
        label = (zone, qtype_label(query.q.qtype), rcode_label(answer.rcode))
        response: bytes | None
        try:
            if (
                self._answer_cache is not None
                and answer.expires_in > 0
                and not self._chain.changed_since(answer)  # never keep what is overtaken
            ):
                rotations = min(answer.rotations(), MAX_ROTATIONS)
                # Start where the last answer left off, so uncached askers see the order rotate.
                turns = range(self._turn, self._turn + rotations)
                variants = [self._fitted(query, answer, edns, udp_limit, turn) for turn in turns]
                whole = all(_whole(variant, answer, edns) for variant in variants)
                response = self._remember(data, query, answer, variants, label, client_ip, whole)
                if not udp and not whole:
                    response = self._fitted(query, answer, edns, MAX_TCP_SIZE, self._turn)
            else:
                limit = udp_limit if udp else MAX_TCP_SIZE
                response = self._fitted(query, answer, edns, limit, self._turn)
        except Exception as exc:  # an answer dnslib cannot pack: the asker still gets a reply
            throttled.warning("pack", "cannot pack the answer to %s: %r", query.q.qname, exc)
            label = (label[0], label[1], "SERVFAIL")
            response = error_response(data, RCODE_SERVFAIL, echo_question=True)
        self._stats.answers[(*label, _proto(udp))] += 1
        return response

    def _remember(
        self,
        data: bytes,
        query: DNSRecord,
        answer: Answer,
        variants: list[bytes],
        label: tuple[str, str, str],
        client_ip: str,
        whole: bool,
    ) -> bytes:
        """Put the packed rotations in the packed-answer cache (``whole``: nothing was cut to
        fit UDP, so TCP askers may have them too); the first one to send."""
        assert self._answer_cache is not None
        now = self._clock()
        expires = now + answer.expires_in
        aging = None
        if answer.recursive or not math.isinf(answer.expires_in):
            expires = min(expires, now + FORWARDED_REFRESH_S)
            aging = (now, answer.expires_in)  # TTLs counted down in place until then
        client = client_ip if answer.per_client else None
        # Every entry depends at least on its own name (a forwarded answer is shadowed by a
        # record the store gains for that name).
        qname = text_of(query.q.qname).lower()
        depends = answer.depends or (qname,)
        question = None  # a forwarded answer: refreshed ahead of its expiry when popular
        if answer.recursive and answer.enters is None and answer.follow is None:
            question = (qname, query.q.qtype, query.q.qclass)
        return self._answer_cache.put(
            data, variants, expires, answer.recursive, client, label, aging, depends,
            answer.scopes, question, whole,
        )  # fmt: skip

    def _fitted(self, query: DNSRecord, answer: Answer, edns: bool, limit: int, turn: int) -> bytes:
        """The reply, fitted to ``limit``: the additional section goes first (no TC, RFC 2181
        9); if the answer still does not fit, TC=1 with as many whole answer records as fit
        (dnsmasq does the same: stub resolvers that never retry over TCP, such as musl before
        1.2.4 and busybox, still get addresses), the OPT record kept.  Never more records are
        packed than ``limit`` could hold, and the count that fits is found from the size of
        one packing (records of one RRset are about the same size), so a big RRset costs a
        few packings of what fits, not a search over all of it."""
        records: list[Any] = []
        most = limit // MIN_RECORD_BYTES
        for rrset in answer.rrsets:
            shift = turn % len(rrset)
            records += [*rrset[shift:], *rrset[:shift]]
            if len(records) > most:
                break
        if len(records) <= most:
            packed = self._sections(
                query, answer, records, answer.authority, answer.additional, edns
            )
            if len(packed) <= limit:
                return packed
            packed = self._sections(query, answer, records, answer.authority, [], edns)
            if len(packed) <= limit:
                return packed
        del records[most:]

        def fits(count: int) -> bool:
            return len(self._sections(query, answer, records[:count], [], [], edns)) <= limit

        bare = len(self._sections(query, answer, [], [], [], edns))
        whole = len(self._sections(query, answer, records, [], [], edns))
        per_record = max((whole - bare) / max(len(records), 1), 1.0)
        low, high = 0, len(records)  # fits(low); not fits(high + 1)
        guess = min(int((limit - bare) / per_record), high)
        if guess > low and fits(guess):
            low = guess
            if guess < high and not fits(guess + 1):
                high = guess
        elif guess > low:
            high = guess - 1
        while low < high:  # only when the records' sizes differ: a binary search
            middle = (low + high + 1) // 2
            if fits(middle):
                low = middle
            else:
                high = middle - 1
        return self._sections(query, answer, records[:low], [], [], edns, truncated=True)

    def _sections(
        self,
        query: DNSRecord,
        answer: Answer,
        records: Sequence[Any],
        authority: Sequence[Any],
        additional: Sequence[Any],
        edns: bool,
        truncated: bool = False,
    ) -> bytes:
        """The same bytes as a dnslib ``DNSRecord`` of these sections would pack (names
        compressed against the question and each other), without building one: its header
        and record list cost more than the packing itself (``pack_reply``)."""
        flags = (
            FLAG_QR
            | (FLAG_AA if answer.authoritative else 0)
            | (FLAG_TC if truncated else 0)
            | (FLAG_RD if query.header.rd else 0)
            | (FLAG_RA if self._recursion_available else 0)
            | (answer.rcode & 0x0F)
        )
        opt = self._opt if edns else None
        return pack_reply(query.header.id, flags, query.q, records, authority, additional, opt)

    def _refused(self, data: bytes, refusal: Refusal) -> bytes | None:
        """The reply to a query ``read_query`` refused, counted."""
        if refusal.kind == BADVERS:
            return self._badvers(refusal.query)
        if refusal.kind == NOTIMP_ECHO:
            self._stats.refused_packets.add(NOTIMP)
            return error_response(data, RCODE_NOTIMP, echo_question=True)
        self._stats.refused_packets.add(FORMERR)
        return error_response(data, RCODE_FORMERR, echo_question=refusal.kind == FORMERR_ECHO)

    def _badvers(self, query: DNSRecord) -> bytes:
        header = DNSHeader(id=query.header.id, qr=1, rd=query.header.rd, rcode=0)
        reply = DNSRecord(header, q=query.q)
        reply.add_ar(EDNS0(udp_len=self._max_udp_size, ext_rcode=EDNS_BADVERS >> 4))
        return bytes(reply.pack())


def _whole(packed: bytes, answer: Answer, edns: bool) -> bool:
    """``packed`` holds every record of ``answer`` (its counts say so): not cut to fit."""
    records, authority, additional = _COUNTS.unpack_from(packed, 6)
    return (
        records == sum(len(rrset) for rrset in answer.rrsets)
        and authority == len(answer.authority)
        and additional == len(answer.additional) + edns
    )


def _proto(udp: bool) -> str:
    return "udp" if udp else "tcp"
