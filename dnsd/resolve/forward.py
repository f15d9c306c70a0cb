"""The forwarder: the last stage, asking upstream resolvers over UDP (TCP on truncation).

Each upstream query gets a fresh random ID and a fresh socket (so a fresh random source port);
replies are accepted only from the upstream asked, with the ID and question sent; anything else is
dropped and counted.  A reply is scrubbed before anyone sees it (``scrub``: the name's records
and its chain, an SOA above them, nothing at a name in dnsd's own zones: a chain that enters
them is cut there, ``Answer.enters``, and completed from the local zone by the resolver chain).
Upstreams are tried in the order of ``upstream_health`` (healthy ones only; one that keeps
failing is probed in the background until it answers) with a per-upstream timeout; when
every one fails, or none is healthy, the answer is SERVFAIL at once (the forwarding cache then
serves stale).  Only transport failures count against an upstream's health, and a timeout only
when the upstream has replied to nothing since the question was sent: a SERVFAIL or REFUSED
reply, or one name that never gets an answer while others do, is that name's failure, not the
upstream's (a recursive upstream answers SERVFAIL for every domain with broken DNSSEC).  A
name that failed at every upstream asked gets SERVFAIL at once for ``failure_ttl_s`` without
asking again (RFC 9520: resolution failures are cached), so one broken name cannot hammer the
upstreams.  A name under a configured domain goes to that domain's upstreams only (the longest
domain wins, dnsmasq ``server=/domain/addr`` style); other names to the default upstreams, or
REFUSED when there are none.  An upstream written ``tls://ADDR[:PORT][#name]``
(``upstreams``) is asked over DNS-over-TLS (RFC 7858, port 853, ``dot``), its certificate
checked against ``name`` (else the address).  Knows nothing about caching or the local zone.
Event-loop only: health, the failure cache, ``recovered_at`` and the kept DoT connections are
read and written on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
import ssl
import struct
import time
from collections.abc import Callable

from cachetools import TTLCache
from dnslib import EDNS0, QTYPE, RCODE, DNSHeader, DNSQuestion, DNSRecord

from dnsd.errors import DnsdError
from dnsd.logs import Throttled
from dnsd.names import in_zone, label_of
from dnsd.protocol import RCODE_REFUSED, RCODE_SERVFAIL
from dnsd.resolve.answer import Answer
from dnsd.resolve.dot import DotConnection
from dnsd.resolve.rebind import RebindGuard
from dnsd.resolve.scrub import matching_reply, to_answer
from dnsd.resolve.upstream_health import MAX_FAILS, PROBE_INTERVAL_S, UpstreamHealth
from dnsd.resolve.upstreams import Upstream
from dnsd.stats import Stats

logger = logging.getLogger(__name__)
throttled = Throttled(logger, interval_s=60.0)

UPSTREAM_TIMEOUT_S = 2.0
UPSTREAM_UDP_SIZE = 1232
MAX_REPLY_BYTES = 65535
FAILURE_TTL_S = 5.0  # a name that failed everywhere gets SERVFAIL at once for this long
FAILURES_KEPT = 10_000


class UpstreamError(DnsdError):
    """An upstream did not give a usable reply."""


class Forwarder:
    def __init__(
        self,
        upstreams: list[Upstream],
        stats: Stats,
        timeout_s: float = UPSTREAM_TIMEOUT_S,
        random_id: Callable[[], int] | None = None,
        domains: dict[str, list[Upstream]] | None = None,
        tls_ca: str = "",
        zones: tuple[str, ...] = (),
        rebind: RebindGuard | None = None,
        max_fails: int = MAX_FAILS,
        policy: str = "sequential",
        probe_interval_s: float = PROBE_INTERVAL_S,
        failure_ttl_s: float = FAILURE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``failure_ttl_s`` 0: a failed name is asked again at once."""
        self.domains = {d: list(u) for d, u in (domains or {}).items() if u}
        if not upstreams and not self.domains:
            raise ValueError("forwarding needs at least one upstream")
        self.upstreams = list(upstreams)  # the default ones (names under no domain)
        # Longest domain first: ``a.corp.example.`` picks ``corp.example.`` over ``example.``.
        self._domain_order = sorted(self.domains, key=len, reverse=True)
        self._stats = stats
        self._timeout_s = timeout_s
        self._random_id = random_id or (lambda: random.SystemRandom().getrandbits(16))
        everyone = [*self.upstreams, *(u for ups in self.domains.values() for u in ups)]
        self.health = UpstreamHealth(everyone, max_fails, policy)
        self._probe_interval_s = probe_interval_s
        self._probes: dict[Upstream, asyncio.Task[None]] = {}
        self._dot: dict[Upstream, DotConnection] = {}  # one kept-open connection per upstream
        self._tls_ca = tls_ca
        self._tls: ssl.SSLContext | None = None
        self._zones = zones  # dnsd's own: no upstream record at a name in them is passed on
        self._rebind = rebind  # None: private addresses from upstream are passed on
        self._clock = clock
        self.recovered_at = -math.inf  # when an upstream that was down last answered again
        self.on_recovered: Callable[[], None] = lambda: None  # ... called then
        self._last_reply: dict[Upstream, float] = {}  # when each upstream last replied at all
        # (qname, qtype, qclass) -> the failure answered for it, until failure_ttl_s passed
        self._failures: TTLCache[tuple[str, int, int], Answer] | None = (
            TTLCache(FAILURES_KEPT, failure_ttl_s, timer=clock) if failure_ttl_s > 0 else None
        )

    def owns(self, name: str) -> bool:
        return any(in_zone(name, zone) for zone in self._zones)

    def route(self, qname: str) -> list[Upstream]:
        """The upstreams for ``qname``: its longest configured domain's, else the defaults."""
        for domain in self._domain_order:
            if in_zone(qname, domain):
                return self.domains[domain]
        return self.upstreams

    async def resolve(self, qname: str, qtype: int, qclass: int) -> Answer:
        upstreams = self.route(qname)
        if not upstreams:  # only domains configured, or every default was a loop to dnsd
            return Answer(RCODE_REFUSED, recursive=True)
        key = (qname, qtype, qclass)
        if self._failures is not None and (failed := self._failures.get(key)) is not None:
            self._stats.forward_failures_cached += 1
            return failed
        refused: Answer | None = None  # the last SERVFAIL/REFUSED reply, if all were such
        asked = False
        for upstream in self.health.order(upstreams):
            asked = True
            sent_at = self._clock()
            try:
                reply = await self._ask(upstream, qname, qtype, qclass)
            except (TimeoutError, OSError, UpstreamError) as exc:
                # A timeout while the upstream answers others: this name's failure only.
                alive = isinstance(exc, TimeoutError) and self._replied_since(upstream, sent_at)
                self._failed(upstream, counts_against_health=not alive)
                logger.debug("upstream %s failed for %s: %r", upstream, qname, exc)
                continue
            if self.health.answered(upstream):
                self._back(upstream)
            if reply[0].header.rcode in (RCODE_SERVFAIL, RCODE_REFUSED):
                self._failed(upstream, counts_against_health=False)  # the next may do better
                refused = to_answer(reply[0], qname, qtype, reply[1], self.owns)[0]
                continue
            answer, scrubbed = to_answer(reply[0], qname, qtype, reply[1], self.owns)
            self._stats.upstream_scrubbed += scrubbed
            records = [rr for rrset in answer.rrsets for rr in rrset]
            if self._rebind is not None and not self._rebind.allows(qname, records):
                self._stats.forward_rebind_refused += 1
                throttled.warning(
                    "rebind",
                    "refused an upstream answer for %s holding a private address "
                    "(forward.stop_rebind; allow the domain in forward.rebind_allowed)",
                    qname,
                )
                return Answer(RCODE_REFUSED, recursive=True)
            return answer
        failure = refused if refused is not None else Answer(RCODE_SERVFAIL, recursive=True)
        if asked and self._failures is not None:  # not when none was healthy: no one was asked
            self._failures[key] = failure
        if refused is None:
            throttled.warning(
                "all failed",
                "every upstream failed or is down (%s); answering SERVFAIL for names outside "
                "the zones",
                ", ".join(str(u) for u in upstreams),
            )
        return failure

    def _back(self, upstream: Upstream) -> None:
        """An upstream that was down answers again: names that failed meanwhile (likely for
        that reason) are asked again at once, and the caches above are told."""
        self.recovered_at = self._clock()
        logger.info("upstream %s answers again", upstream)
        if self._failures is not None:
            self._failures.clear()
        self.on_recovered()

    def _replied_since(self, upstream: Upstream, moment: float) -> bool:
        return self._last_reply.get(upstream, -math.inf) >= moment

    def _failed(self, upstream: Upstream, counts_against_health: bool) -> None:
        """A question that got no usable answer from ``upstream``: counted; against its health
        only when the upstream itself seems gone (a transport failure)."""
        self._stats.upstream_errors += 1
        self._stats.upstream_failures[str(upstream)] += 1
        if counts_against_health and self.health.failed(upstream):
            logger.warning(
                "upstream %s is down (%d failures in a row): probing it every %.1f s",
                upstream,
                self.health.max_fails,
                self._probe_interval_s,
            )
            if upstream not in self._probes:
                task = asyncio.ensure_future(self._probe_until_up(upstream))
                self._probes[upstream] = task
                task.add_done_callback(lambda _t: self._probes.pop(upstream, None))

    async def _probe_until_up(self, upstream: Upstream) -> None:
        """A ``. NS`` question every probe interval until the upstream replies at all."""
        while not self.health.healthy(upstream):
            await asyncio.sleep(self._probe_interval_s)
            try:
                await self._ask(upstream, ".", QTYPE.NS, 1, counted=False)
            except (TimeoutError, OSError, UpstreamError):
                continue
            if self.health.answered(upstream):
                self._back(upstream)
            return

    def upstream_states(self) -> dict[str, bool]:
        """Every upstream asked (as written; not one dropped as a loop) -> healthy."""
        asked = [*self.upstreams, *(u for ups in self.domains.values() for u in ups)]
        return {str(u): self.health.healthy(u) for u in asked}

    def close(self) -> None:
        """Stop the probes and close the DoT connections (shutdown)."""
        for task in list(self._probes.values()):
            task.cancel()
        for connection in self._dot.values():
            connection.close()

    def _dot_connection(self, upstream: Upstream) -> DotConnection:
        connection = self._dot.get(upstream)
        if connection is None:
            connection = self._dot[upstream] = DotConnection(
                upstream.host, upstream.port, self._tls_context(), upstream.tls_name
            )
        return connection

    async def probe(self, upstream: Upstream, qname: str) -> object:
        """One A question to one upstream, nothing cached (the loop detector's probe)."""
        return await self._ask(upstream, qname, 1, 1, counted=False)

    def drop(self, upstream: Upstream) -> None:
        if upstream in self.upstreams:
            self.upstreams.remove(upstream)

    async def _ask(
        self, upstream: Upstream, qname: str, qtype: int, qclass: int, counted: bool = True
    ) -> tuple[DNSRecord, int]:
        """One question to one upstream; ``counted``: in the per-upstream metrics (the loop
        detector's probes are not)."""
        ident = self._random_id()
        connection = self._dot_connection(upstream) if upstream.tls_name else None
        while connection is not None and connection.busy(ident):  # IDs unique per connection
            ident = self._random_id()
        query = DNSRecord(DNSHeader(id=ident, rd=1), q=DNSQuestion(label_of(qname), qtype, qclass))
        query.add_ar(EDNS0(udp_len=UPSTREAM_UDP_SIZE))
        packet = query.pack()
        to = str(upstream)
        if counted:
            self._stats.upstream_requests[to] += 1
        started = time.monotonic()
        async with asyncio.timeout(self._timeout_s):
            if connection is not None:
                data = await connection.ask(packet, ident)
                matched = matching_reply(data, ident, qname, qtype, qclass)
                if matched is None:
                    self._stats.upstream_mismatched += 1
                    raise UpstreamError("DoT reply does not match the query")
                reply = (matched, len(data))
            else:
                reply = await self._ask_udp(upstream, packet, ident, qname, qtype, qclass)
                if reply[0].header.tc:
                    reply = await self._ask_tcp(upstream, packet, ident, qname, qtype, qclass)
        self._last_reply[upstream] = self._clock()
        if counted:
            self._stats.upstream_queries += 1
            self._stats.upstream_durations[to].observe(time.monotonic() - started)
            self._stats.upstream_responses[(to, RCODE.get(reply[0].header.rcode, "other"))] += 1
        return reply

    async def _ask_udp(
        self, upstream: Upstream, packet: bytes, ident: int, qname: str, qtype: int, qclass: int
    ) -> tuple[DNSRecord, int]:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in upstream.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            # A connected UDP socket: the kernel drops datagrams from any other address.
            sock.connect((upstream.host, upstream.port))
            await loop.sock_sendall(sock, packet)
            while True:
                data = await loop.sock_recv(sock, MAX_REPLY_BYTES)
                reply = matching_reply(data, ident, qname, qtype, qclass)
                if reply is not None:
                    return reply, len(data)
                self._stats.upstream_mismatched += 1

    async def _ask_tcp(
        self, upstream: Upstream, packet: bytes, ident: int, qname: str, qtype: int, qclass: int
    ) -> tuple[DNSRecord, int]:
        """One question over TCP (a truncated UDP reply), a connection per question."""
        reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
        try:
            writer.write(struct.pack("!H", len(packet)) + packet)
            await writer.drain()
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            data = await reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise UpstreamError("connection closed mid-reply") from exc
        finally:
            writer.close()
        reply = matching_reply(data, ident, qname, qtype, qclass)
        if reply is None:
            self._stats.upstream_mismatched += 1
            raise UpstreamError("TCP reply does not match the query")
        return reply, len(data)

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:  # certificates and names checked; the system CAs unless given
            self._tls = ssl.create_default_context(cafile=self._tls_ca or None)
        return self._tls
