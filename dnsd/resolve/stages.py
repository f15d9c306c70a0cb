"""The resolver's stages, in the order the chain runs them (``standard_stages``):

    loop guard -> class guard -> local zone -> recursion gate -> forwarding cache -> upstream

Each stage is called with the question and the rest of the chain (``rest``): it answers, or
passes the question on and returns what the rest answered, perhaps completed on the way back.
A stage returns an ``Answer`` when no I/O is needed, an awaitable only when the question must
wait for an upstream.  Past the last stage nobody answered: REFUSED.

The local zone is the one stage that looks at what comes back: a forwarded chain that enters
our zones is completed from the store (the upstream's records there are never kept), a name
the store did not hold when the question came is marked as depending on that name (a store
change while the upstream was asked drops the answer), and a CNAME of ours that leaves the
zones is followed through the rest of the chain, as a recursive resolver does for stub
clients that do not chase CNAMEs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

from dnsd.protocol import RCODE_REFUSED, RCODE_SERVFAIL
from dnsd.resolve.acl import Acl
from dnsd.resolve.answer import UNREAD, Answer
from dnsd.resolve.budget import UpstreamBudget
from dnsd.resolve.cache import ForwardCache
from dnsd.resolve.local import LocalZone
from dnsd.resolve.loop_detector import LoopDetector
from dnsd.stats import Stats

CLASS_IN = 1
CLASS_ANY = 255

Result = Answer | Awaitable[Answer]


@dataclass(frozen=True, slots=True)
class Question:
    qname: str  # lower case
    qtype: int
    qclass: int
    spelled: str  # as asked (its letter case is echoed)
    client_ip: str


Rest = Callable[[Question], Result]


class Stage(Protocol):
    def __call__(self, question: Question, rest: Rest) -> Result: ...


def refused(question: Question) -> Answer:
    """Past the last stage: nobody answers this question."""
    return Answer(RCODE_REFUSED)


def chained(stages: list[Stage]) -> Rest:
    """The stages as one call, each handed the ones after it."""
    rest: Rest = refused
    for stage in reversed(stages):
        rest = _link(stage, rest)
    return rest


def _link(stage: Stage, rest: Rest) -> Rest:
    return lambda question: stage(question, rest)


class LoopGuard:
    """Our own loop probe came back (an upstream forwards to us): the loop ends here."""

    def __init__(self, detector: LoopDetector) -> None:
        self._detector = detector

    def __call__(self, question: Question, rest: Rest) -> Result:
        detector = self._detector
        if detector.probes and detector.returned(question.qname):
            return Answer(RCODE_REFUSED)
        return rest(question)


class ClassGuard:
    """CH, HS, NONE...: never answered from the zones, never sent upstream (a zone name must
    not leak out in a query of another class)."""

    def __call__(self, question: Question, rest: Rest) -> Result:
        if question.qclass not in (CLASS_IN, CLASS_ANY):
            return Answer(RCODE_REFUSED)
        return rest(question)


class LocalStage:
    """The zones we own (``LocalZone``); see the module's text for what it does on the way
    back.  ``forwards(client_ip)``: whether the rest of the chain may go upstream for that
    client (a CNAME leaving the zones is followed only then)."""

    def __init__(self, local: LocalZone, stats: Stats, forwards: Callable[[str], bool]) -> None:
        self._local = local
        self._stats = stats
        self._forwards = forwards

    def __call__(self, question: Question, rest: Rest) -> Result:
        generation = self._local.generation  # what the store said when the question came
        local = self._local.answer(
            question.qname, question.qtype, question.spelled, question.client_ip
        )
        if local is not None:
            if not local.follow:
                return local
            if self._forwards(question.client_ip):
                target = local.follow.lower()
                found = rest(replace(question, qname=target, spelled=target))
                if isinstance(found, Answer):
                    return self._joined(local, self._completed(found, question))
                return self._joined_later(local, found, question)
            # The CNAME-only half answer is for this asker only: an allowed client asking next
            # must get the whole chain, so it is never cached.
            return replace(local, expires_in=0.0)
        found = rest(question)
        if isinstance(found, Answer):
            return self._completed(found, question)
        return self._forwarded(found, question, generation)

    async def _forwarded(
        self, pending: Awaitable[Answer], question: Question, generation: int
    ) -> Answer:
        """A name the store did not hold at ``generation``, asked upstream: the answer
        depends on the store still not holding it when the upstream replies."""
        answer = self._completed(await pending, question)
        if answer.generation != UNREAD:  # completed from the store after the wait
            return answer
        return replace(answer, depends=(question.qname,), generation=generation)

    def _completed(self, upstream: Answer, question: Question) -> Answer:
        """An upstream chain that entered our zones, completed from the local zone: its rcode,
        its records, and its dependencies, so a store change drops the whole answer.  A local
        chain that leaves the zones again is cut there, never sent upstream a second time (no
        loop)."""
        target = upstream.enters
        if target is None:
            return upstream
        local = self._local.answer(target, question.qtype, target, question.client_ip)
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

    async def _joined_later(
        self, local: Answer, pending: Awaitable[Answer], question: Question
    ) -> Answer:
        return self._joined(local, self._completed(await pending, question))

    @staticmethod
    def _joined(local: Answer, upstream: Answer) -> Answer:
        """Our CNAME chain, then the rest of the chain's answer for its target."""
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


class RecursionGate:
    """Only clients the recursion ACL allows go past the local zone."""

    def __init__(self, acl: Acl) -> None:
        self._acl = acl

    def __call__(self, question: Question, rest: Rest) -> Result:
        if not self._acl.allows(question.client_ip):
            return Answer(RCODE_REFUSED)
        return rest(question)


class ForwardCacheStage:
    """Answers forwarded a moment ago, kept for their TTL (``ForwardCache``)."""

    def __init__(self, forward: ForwardCache) -> None:
        self._forward = forward

    def __call__(self, question: Question, rest: Rest) -> Result:
        hit = self._forward.get((question.qname, question.qtype, question.qclass))
        if hit is not None:
            return hit
        return rest(question)


class UpstreamStage:
    """Asks the upstreams (through the forwarding cache, which coalesces and keeps the
    answer) within the pending-questions budget."""

    def __init__(self, forward: ForwardCache, budget: UpstreamBudget, stats: Stats) -> None:
        self._forward = forward
        self._budget = budget
        self._stats = stats

    def __call__(self, question: Question, rest: Rest) -> Result:
        return self._asked(question)

    async def _asked(self, question: Question) -> Answer:
        """The budget is taken when the question starts waiting, so a question dropped
        before it starts holds nothing; over it: SERVFAIL, not cached.  The forwarding cache
        stage before this one counted the miss."""
        if not self._budget.take(question.client_ip):
            self._stats.forward_over_budget += 1
            return Answer(RCODE_SERVFAIL, recursive=True)
        try:
            return await self._forward.resolve(
                question.qname, question.qtype, question.qclass, False
            )
        finally:
            self._budget.give(question.client_ip)


def standard_stages(
    local: LocalZone,
    forward: ForwardCache | None,
    acl: Acl,
    budget: UpstreamBudget,
    stats: Stats,
    loop_detector: LoopDetector | None = None,
) -> list[Stage]:
    """dnsd's chain: without forwarding it ends at the local zone (then REFUSED)."""
    stages: list[Stage] = []
    if loop_detector is not None:
        stages.append(LoopGuard(loop_detector))
    stages.append(ClassGuard())
    stages.append(LocalStage(local, stats, lambda ip: forward is not None and acl.allows(ip)))
    if forward is not None:
        stages += [
            RecursionGate(acl),
            ForwardCacheStage(forward),
            UpstreamStage(forward, budget, stats),
        ]
    return stages
