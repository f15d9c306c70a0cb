"""The resolver chain: its stages in order (``dnsd.resolve.stages``: local zone -> forwarding
cache -> forwarder, and who may recurse), each passing the question on to the next.

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

from collections.abc import Awaitable, Sequence
from dataclasses import replace

from dnsd.resolve.acl import Acl
from dnsd.resolve.answer import Answer
from dnsd.resolve.budget import DEFAULT_MAX_PENDING, UpstreamBudget
from dnsd.resolve.cache import ForwardCache
from dnsd.resolve.local import LocalZone
from dnsd.resolve.loop_detector import LoopDetector
from dnsd.resolve.stages import Question, Stage, chained, standard_stages
from dnsd.stats import Stats

MAX_REBUILDS = 4  # builds of one answer whose sources keep changing during its upstream waits


class ResolverChain:
    def __init__(
        self, local: LocalZone, stages: Sequence[Stage], stats: Stats | None = None
    ) -> None:
        """``stages`` in the order they are asked; ``local`` is the zone whose changes make
        an answer completed across an ``await`` out of date."""
        self.local = local
        self.stages = list(stages)
        self._first = chained(self.stages)
        self._stats = stats or Stats()

    def zone_of(self, qname: str) -> str:
        """The owned zone ``qname`` is in, "." for any other name (the metrics' zone label)."""
        return self.local.zone_of(qname) or "."

    def resolve(
        self, qname: str, qtype: int, qclass: int, spelled: str, client_ip: str
    ) -> Answer | Awaitable[Answer]:
        question = Question(qname, qtype, qclass, spelled, client_ip)
        result = self._first(question)
        if isinstance(result, Answer):
            return result  # built in one go: current by construction
        return self._current(result, question)

    async def _current(self, pending: Awaitable[Answer], question: Question) -> Answer:
        """``pending``'s answer if nothing it was built from changed while it waited; else
        the answer built again from the current store."""
        answer = await pending
        for _ in range(MAX_REBUILDS - 1):
            if not self.local.changed_since(answer):
                return answer
            self._stats.answers_rebuilt += 1
            result = self._first(question)
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


def standard_chain(
    local: LocalZone,
    forward: ForwardCache | None,
    acl: Acl,
    budget: UpstreamBudget | None = None,
    stats: Stats | None = None,
    loop_detector: LoopDetector | None = None,
) -> ResolverChain:
    """dnsd's chain (``standard_stages``) over these parts."""
    stats = stats or Stats()
    budget = budget or UpstreamBudget(DEFAULT_MAX_PENDING)
    stages = standard_stages(local, forward, acl, budget, stats, loop_detector)
    return ResolverChain(local, stages, stats)
