"""The resolver chain: local zone -> forwarding cache -> forwarder, and who may recurse.

Returns an ``Answer`` directly when no I/O is needed (local names, cache hits, refusals) and an
awaitable only when the question must go upstream.  Knows nothing about bytes or sockets.

Answers completed across an ``await`` are current when they are returned: the record store
may change while an upstream is asked (the local half of a CNAME chain that leaves the zones,
or a name the store gains while the question is forwarded), so once the upstream has answered
the answer is checked against the store's recent changes (``LocalZone.changed_since``) and,
when a name it was built from changed meanwhile, built again from the current store, up to
``MAX_REBUILDS`` times.  One still overtaken then is sent but never cached (``expires_in`` 0).
The check and the caller's use of the answer run in one step of the event loop (the only
writer of the store), so no change can slip in between.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import replace

from dnsd.protocol import RCODE_REFUSED, RCODE_SERVFAIL
from dnsd.resolve.acl import Acl
from dnsd.resolve.answer import UNREAD, Answer
from dnsd.resolve.budget import DEFAULT_MAX_PENDING, UpstreamBudget
from dnsd.resolve.cache import ForwardCache
from dnsd.resolve.local import LocalZone
from dnsd.resolve.loop_detector import LoopDetector
from dnsd.stats import Stats

CLASS_IN = 1
CLASS_ANY = 255
MAX_REBUILDS = 4  # builds of one answer whose sources keep changing during its upstream waits


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
        result = self._attempt(qname, qtype, qclass, spelled, client_ip)
        if isinstance(result, Answer):
            return result  # built in one go: current by construction
        return self._current(result, qname, qtype, qclass, spelled, client_ip)

    async def _current(
        self,
        pending: Awaitable[Answer],
        qname: str,
        qtype: int,
        qclass: int,
        spelled: str,
        client_ip: str,
    ) -> Answer:
        """``pending``'s answer if nothing it was built from changed while it waited; else
        the answer built again from the current store."""
        answer = await pending
        for _ in range(MAX_REBUILDS - 1):
            if not self.local.changed_since(answer):
                return answer
            self._stats.answers_rebuilt += 1
            result = self._attempt(qname, qtype, qclass, spelled, client_ip)
            if isinstance(result, Answer):
                return result
            answer = await result
        if not self.local.changed_since(answer):
            return answer
        self._stats.answers_overtaken += 1
        return replace(answer, expires_in=0.0)  # sent once, never kept

    def changed_since(self, answer: Answer) -> bool:
        """Has a name ``answer`` was built from changed in the store since it was built?"""
        return self.local.changed_since(answer)

    def _attempt(
        self, qname: str, qtype: int, qclass: int, spelled: str, client_ip: str
    ) -> Answer | Awaitable[Answer]:
        detector = self.loop_detector
        if detector is not None and detector.probes and detector.returned(qname):
            return Answer(RCODE_REFUSED)  # our own probe came back: end the loop here
        if qclass not in (CLASS_IN, CLASS_ANY):
            # CH, HS, NONE...: never answered from the zones, never sent upstream (a zone name
            # must not leak out in a query of another class).
            return Answer(RCODE_REFUSED)
        generation = self.local.generation  # what the store said when the question came
        local = self.local.answer(qname, qtype, spelled, client_ip)
        if local is not None:
            if not local.follow:
                return local
            if self.forward is not None and self.acl.allows(client_ip):
                return self._follow(local, local.follow, qtype, qclass, client_ip)
            # The CNAME-only half answer is for this asker only: an allowed client asking next
            # must get the whole chain, so it is never cached.
            return replace(local, expires_in=0.0)
        if self.forward is None or not self.acl.allows(client_ip):
            return Answer(RCODE_REFUSED)
        hit = self.forward.get((qname, qtype, qclass))
        if hit is not None:
            return self._completed(hit, qtype, client_ip)
        return self._forwarded(qname, qtype, qclass, client_ip, generation)

    async def _forwarded(
        self, qname: str, qtype: int, qclass: int, client_ip: str, generation: int
    ) -> Answer:
        """A name the store did not hold at ``generation``, asked upstream: the answer
        depends on the store still not holding it when the upstream replies."""
        answer = await self._upstream(qname, qtype, qclass, client_ip, counted=False)
        if answer.generation != UNREAD:  # completed from the store after the wait
            return answer
        return replace(answer, depends=(qname,), generation=generation)

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
            return replace(upstream, enters=None)
        self._stats.forward_entered_zone += 1
        return Answer(
            rcode=local.rcode,
            rrsets=(*upstream.rrsets, *local.rrsets),
            authority=local.authority,
            additional=local.additional,
            expires_in=min(upstream.expires_in, local.expires_in),
            recursive=True,
            per_client=local.per_client,
            scopes=local.scopes,
            depends=local.depends or (target,),
            generation=local.generation,
        )

    async def _follow(
        self, local: Answer, target: str, qtype: int, qclass: int, client_ip: str
    ) -> Answer:
        """Our CNAME chain ends outside our zones: append upstream's answer for the target, as a
        recursive resolver would for stub clients (busybox, glibc) that do not chase CNAMEs."""
        assert self.forward is not None
        upstream = await self._upstream(target.lower(), qtype, qclass, client_ip)
        depends = local.depends + upstream.depends  # the upstream's part may enter a zone again
        # Read at the older of the two generations: a change after either is a change.
        generations = [g for g in (local.generation, upstream.generation) if g != UNREAD]
        return Answer(
            rcode=upstream.rcode,
            authoritative=local.authoritative,
            rrsets=(*local.rrsets, *upstream.rrsets),
            authority=upstream.authority,
            additional=upstream.additional,
            expires_in=upstream.expires_in,
            recursive=True,
            per_client=local.per_client or upstream.per_client,
            scopes=local.scopes + upstream.scopes,
            depends=depends,
            generation=min(generations, default=UNREAD),
        )
