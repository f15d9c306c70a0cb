"""The resolver chain: local zone -> forwarding cache -> forwarder, and who may recurse.

Returns an ``Answer`` directly when no I/O is needed (local names, cache hits, refusals) and an
awaitable only when the question must go upstream.  Knows nothing about bytes or sockets.
"""

from __future__ import annotations

from collections.abc import Awaitable

from dnsd.protocol import RCODE_REFUSED, RCODE_SERVFAIL
from dnsd.resolve.acl import Acl
from dnsd.resolve.answer import Answer
from dnsd.resolve.budget import DEFAULT_MAX_PENDING, UpstreamBudget
from dnsd.resolve.cache import ForwardCache
from dnsd.resolve.local import LocalZone
from dnsd.resolve.loop_detector import LoopDetector
from dnsd.stats import Stats

CLASS_IN = 1
CLASS_ANY = 255


class ResolverChain:
    def __init__(
        self,
        local: LocalZone,
        forward: ForwardCache | None,
        acl: Acl,
        budget: UpstreamBudget | None = None,
        stats: Stats | None = None,
        loop_detector: LoopDetector | None = None,
    ) -> None:
        self.loop_detector = loop_detector
        self.local = local
        self.forward = forward
        self.acl = acl
        self.budget = budget or UpstreamBudget(DEFAULT_MAX_PENDING)
        self._stats = stats or Stats()

    def zone_of(self, qname: str) -> str:
        """The owned zone ``qname`` is in, "." for any other name (the metrics' zone label)."""
        return self.local.zone_of(qname) or "."

    def resolve(
        self, qname: str, qtype: int, qclass: int, spelled: str, client_ip: str
    ) -> Answer | Awaitable[Answer]:
        detector = self.loop_detector
        if detector is not None and detector.probes and detector.returned(qname):
            return Answer(RCODE_REFUSED)  # our own probe came back: end the loop here
        if qclass not in (CLASS_IN, CLASS_ANY):
            # CH, HS, NONE...: never answered from the zones, never sent upstream (a zone name
            # must not leak out in a query of another class).
            return Answer(RCODE_REFUSED)
        local = self.local.answer(qname, qtype, spelled, client_ip)
        if local is not None:
            if not local.follow:
                return local
            if self.forward is not None and self.acl.allows(client_ip):
                return self._follow(local, local.follow, qtype, qclass, client_ip)
            # The CNAME-only half answer is for this asker only: an allowed client asking next
            # must get the whole chain, so it is never cached.
            local.expires_in = 0.0
            return local
        if self.forward is None or not self.acl.allows(client_ip):
            return Answer(RCODE_REFUSED)
        hit = self.forward.get((qname, qtype, qclass))
        if hit is not None:
            return self._completed(hit, qtype, client_ip)
        return self._upstream(qname, qtype, qclass, client_ip, counted=False)

    async def _upstream(
        self, qname: str, qtype: int, qclass: int, client_ip: str, counted: bool = True
    ) -> Answer:
        """Ask upstream within the budget (taken when the question starts waiting, so a
        question dropped before it starts holds nothing); over it: SERVFAIL, not cached."""
        assert self.forward is not None
        if not self.budget.take(client_ip):
            self._stats.forward_over_budget += 1
            return Answer(RCODE_SERVFAIL, recursive=True)
        try:
            answer = await self.forward.resolve(qname, qtype, qclass, counted)
        finally:
            self.budget.give(client_ip)
        return self._completed(answer, qtype, client_ip)

    def _completed(self, upstream: Answer, qtype: int, client_ip: str) -> Answer:
        """An upstream chain that entered our zones, completed from the local zone (the
        upstream's records there were never kept): its rcode, its records, and its
        dependencies, so a store change drops the whole answer.  A local chain that leaves the
        zones again is cut there, never sent upstream a second time (no loop)."""
        target = upstream.enters
        if target is None:
            return upstream
        local = self.local.answer(target, qtype, target, client_ip)
        if local is None:  # cannot happen for a name in the zones; pass the cut chain on
            upstream.enters = None
            return upstream
        self._stats.forward_entered_zone += 1
        return Answer(
            rcode=local.rcode,
            rrsets=upstream.rrsets + local.rrsets,
            authority=local.authority,
            additional=local.additional,
            expires_in=min(upstream.expires_in, local.expires_in),
            recursive=True,
            per_client=local.per_client,
            scopes=local.scopes,
            depends=local.depends or (target,),
        )

    async def _follow(
        self, local: Answer, target: str, qtype: int, qclass: int, client_ip: str
    ) -> Answer:
        """Our CNAME chain ends outside our zones: append upstream's answer for the target, as a
        recursive resolver would for stub clients (busybox, glibc) that do not chase CNAMEs."""
        assert self.forward is not None
        upstream = await self._upstream(target.lower(), qtype, qclass, client_ip)
        depends = local.depends + upstream.depends  # the upstream's part may enter a zone again
        return Answer(
            rcode=upstream.rcode,
            authoritative=local.authoritative,
            rrsets=local.rrsets + upstream.rrsets,
            authority=upstream.authority,
            additional=upstream.additional,
            expires_in=upstream.expires_in,
            recursive=True,
            per_client=local.per_client or upstream.per_client,
            scopes=local.scopes + upstream.scopes,
            depends=depends,
        )
