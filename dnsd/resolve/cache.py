"""The forwarding cache: answers of the stage below (the forwarder), kept for their TTL.

Positive answers live for their smallest TTL, negative ones (NXDOMAIN, NODATA) for
min(SOA TTL, SOA MINIMUM) as RFC 2308 says; answers without a usable TTL, SERVFAIL and other
errors are not kept.  Served TTLs count down.  Identical concurrent misses go upstream once.
Bounded in entries and in bytes (cachetools TLRU, least recently used first out): an entry
costs what its parsed records take in memory (about ``BYTES_PER_WIRE_BYTE`` per byte of the
reply), and a reply over ``MAX_ANSWER_BYTES`` is passed on but not kept.

Serve-stale (RFC 8767): an answer is kept ``stale_for`` past its expiry.  When the refresh of
an expired name fails (the forwarder answers SERVFAIL: every upstream failed) or takes longer
than ``STALE_CLIENT_TIMEOUT_S`` (RFC 8767's client response timer), the expired answer is
served with TTL ``STALE_TTL_S`` — negative answers too — and the refresh goes on in the
background.  For ``STALE_RETRY_S`` after a failed refresh (the failure recheck timer) the
name's askers get the stale answer at once, while one refresh at a time keeps trying, unless
an upstream has come back since that failure (``recovered_at``): then the asker waits for the
refresh as usual, so the first answer after the upstreams return is fresh: when an upstream
comes back (``upstreams_back``) and when a refresh succeeds after failures, the names served
stale are dropped from the packed-answer cache (``on_fresh``), so their next askers reach
this cache again.
Prefetch: the packed-answer cache hands over a forwarded answer asked often near its expiry
(``prefetch``), which is refreshed ahead of time, a bounded number at once.
Knows nothing about upstreams, sockets or the local zone.

What it keeps comes from upstreams only: an upstream chain that enters the zones is kept cut
where it enters (``Answer.enters``) and completed from the store each time it is served, so no
record-store change can leave a kept answer stale.  Answers are immutable: the one answer a
fetch returns goes to every coalesced waiter and into the cache as it is, and each hit is a
new answer with its TTLs counted down.  Event-loop only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

from cachetools import TLRUCache
from dnslib import QTYPE, RR

from dnsd.protocol import RCODE_NOERROR, RCODE_NXDOMAIN, RCODE_SERVFAIL
from dnsd.resolve.answer import Answer
from dnsd.stats import Stats

logger = logging.getLogger(__name__)

CACHE_ENTRIES = 10_000
CACHE_BYTES = 64 * 1024 * 1024
MAX_ANSWER_BYTES = 8192
# Measured: a 16 KB reply parsed into dnslib records takes ~490 KB of memory.
BYTES_PER_WIRE_BYTE = 32
ENTRY_OVERHEAD_BYTES = 1024
MAX_TTL_S = 3600
MAX_NEGATIVE_TTL_S = 900
STALE_FOR_S = 3600  # how long past its TTL an answer may be served stale (CoreDNS: 1 h)
STALE_TTL_S = 30  # the TTL of a stale answer (RFC 8767 4)
STALE_CLIENT_TIMEOUT_S = 1.8  # a refresh slower than this: the stale answer (RFC 8767 5)
STALE_RETRY_S = 30.0  # after a failed refresh: stale at once, for this long (RFC 8767 5)
STALE_KEEP_S = 1.0  # how long the packed-answer cache may serve a stale answer as it is
MAX_PREFETCHES = 32  # refreshes ahead of expiry upstream at once; more are skipped, counted

Key = tuple[str, int, int]


class NextStage(Protocol):
    def resolve(self, qname: str, qtype: int, qclass: int) -> Awaitable[Answer]: ...


@dataclass(slots=True)
class _Entry:
    answer: Answer
    stored_at: float
    expires_at: float
    cost: int  # estimated bytes of memory


def entry_cost(answer: Answer) -> int:
    return ENTRY_OVERHEAD_BYTES + BYTES_PER_WIRE_BYTE * answer.wire_size


def cache_ttl(answer: Answer) -> int:
    """How long an upstream answer may be kept (0: not at all)."""
    if answer.rcode not in (RCODE_NOERROR, RCODE_NXDOMAIN):
        return 0
    answers = [rr for rrset in answer.rrsets for rr in rrset]
    if answers and answer.rcode == RCODE_NOERROR:
        return min(rr.ttl for rr in [*answers, *answer.authority])
    soas = [rr for rr in answer.authority if rr.rtype == QTYPE.SOA]
    if not soas:
        return 0
    return min(min(rr.ttl, rr.rdata.times[-1]) for rr in soas)


def _aged(rr: RR, elapsed: int) -> RR:
    return RR(rr.rname, rr.rtype, rr.rclass, max(rr.ttl - elapsed, 0), rr.rdata)


def _stale(rr: RR) -> RR:
    return RR(rr.rname, rr.rtype, rr.rclass, STALE_TTL_S, rr.rdata)


def _served(cached: Answer, restamp: Callable[[RR], RR], expires_in: float) -> Answer:
    """A cached answer as served: every record re-stamped (TTLs counted down, or stale)."""
    return Answer(
        rcode=cached.rcode,
        rrsets=[[restamp(rr) for rr in rrset] for rrset in cached.rrsets],
        authority=[restamp(rr) for rr in cached.authority],
        additional=[restamp(rr) for rr in cached.additional],
        expires_in=expires_in,
        recursive=True,
        enters=cached.enters,
    )


class ForwardCache:
    def __init__(
        self,
        next_stage: NextStage,
        stats: Stats,
        max_entries: int = CACHE_ENTRIES,
        max_ttl_s: int = MAX_TTL_S,
        max_negative_ttl_s: int = MAX_NEGATIVE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int = CACHE_BYTES,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        stale_for_s: float = STALE_FOR_S,
        recovered_at: Callable[[], float] = lambda: -math.inf,
    ) -> None:
        """``stale_for_s``: 0 turns serve-stale off.  ``recovered_at``: when an upstream that
        was down last answered again (the forwarder's)."""
        self._next = next_stage
        self._recovered_at = recovered_at
        self.on_fresh: Callable[[str], None] = lambda _qname: None  # stale answers now stale
        self._stale_for_s = stale_for_s
        self._failed: dict[Key, float] = {}  # when a refresh of the name last failed
        self._served_stale_names: set[str] = set()  # since the upstreams last came back
        self.serving_stale = False  # since the first stale answer of this outage
        self._prefetching = 0
        self._stats = stats
        self._max_ttl_s = max_ttl_s
        self._max_negative_ttl_s = max_negative_ttl_s
        self._clock = clock
        self._max_entries = max_entries
        # No single answer may take more than a tenth of the budget.
        self._max_answer_bytes = min(
            max_answer_bytes, (max_bytes // 10 - ENTRY_OVERHEAD_BYTES) // BYTES_PER_WIRE_BYTE
        )
        self._entries: TLRUCache[Key, _Entry] = TLRUCache(
            maxsize=max_bytes,
            ttu=lambda _k, entry, _now: entry.expires_at + stale_for_s,
            timer=clock,
            getsizeof=lambda entry: entry.cost,
        )
        self._inflight: dict[Key, asyncio.Task[Answer]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        """Estimated memory the cached answers take."""
        return int(self._entries.currsize)

    def get(self, key: Key, counted: bool = True) -> Answer | None:
        """A cached answer with its TTLs counted down, or None; ``counted`` in the hit and miss
        counters (a question is counted once, where it first meets the cache)."""
        entry = self._entries.get(key)
        now = self._clock()
        if entry is None or entry.expires_at <= now:  # absent, or kept only to serve stale
            if counted:
                self._stats.forward_cache_misses += 1
            return None
        if counted:
            self._stats.forward_cache_hits += 1
        elapsed = int(now - entry.stored_at)
        return _served(entry.answer, lambda rr: _aged(rr, elapsed), entry.expires_at - now)

    async def resolve(self, qname: str, qtype: int, qclass: int, counted: bool = True) -> Answer:
        """The answer from the cache or upstream.  ``counted=False``: the caller already
        looked the question up with ``get`` (and counted it); it is looked up again, uncounted,
        since an identical question may have filled the entry meanwhile."""
        key = (qname, qtype, qclass)
        hit = self.get(key, counted)
        if hit is not None:
            return hit
        stale = self._entries.get(key) if self._stale_for_s > 0 else None
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch(key))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        else:
            self._stats.forward_coalesced += 1
        if stale is None:
            return await asyncio.shield(task)
        failed_at = self._failed.get(key, -math.inf)
        if self._clock() - failed_at < STALE_RETRY_S and self._recovered_at() < failed_at:
            return self._served_stale(stale, qname)  # refreshing failed a moment ago: don't wait
        try:
            answer = await asyncio.wait_for(asyncio.shield(task), STALE_CLIENT_TIMEOUT_S)
        except TimeoutError:  # the refresh goes on in the background
            self._failed[key] = self._clock()
            return self._served_stale(stale, qname)
        return self._served_stale(stale, qname) if answer.rcode == RCODE_SERVFAIL else answer

    def prefetch(self, qname: str, qtype: int, qclass: int) -> None:
        """Refresh a popular answer before it expires (its askers then never wait on an
        upstream); at most ``MAX_PREFETCHES`` at once, the rest skipped and counted."""
        key = (qname, qtype, qclass)
        if key in self._inflight or self._entries.get(key) is None:
            return
        if self._prefetching >= MAX_PREFETCHES:
            self._stats.forward_prefetch_skipped += 1
            return
        self._stats.forward_prefetches += 1
        self._prefetching += 1
        task = asyncio.ensure_future(self._fetch(key))
        self._inflight[key] = task

        def done(_task: asyncio.Task[Answer]) -> None:
            self._inflight.pop(key, None)
            self._prefetching -= 1

        task.add_done_callback(done)

    def upstreams_back(self) -> None:
        """An upstream that was down answers again: every name served stale since is
        dropped from the packed-answer cache (its next asker gets the refresh)."""
        for qname in self._served_stale_names:
            self.on_fresh(qname)
        self._served_stale_names.clear()

    def _served_stale(self, entry: _Entry, qname: str) -> Answer:
        self._stats.forward_stale_answers += 1
        if len(self._served_stale_names) < self._max_entries:
            self._served_stale_names.add(qname)
        if not self.serving_stale:
            self.serving_stale = True
            logger.warning(
                "upstreams not answering: serving expired answers (TTL %d s, up to %d s past "
                "their own TTL) while refreshing them",
                STALE_TTL_S,
                self._stale_for_s,
            )
        # The packed-answer cache keeps it a second: the askers of a busy name stay on the
        # listener threads, and the loop tries a refresh once a second.
        return _served(entry.answer, _stale, STALE_KEEP_S)

    async def _fetch(self, key: Key) -> Answer:
        answer = await self._next.resolve(*key)
        if answer.rcode == RCODE_SERVFAIL:
            if len(self._failed) >= self._max_entries:
                self._failed.clear()
            self._failed[key] = self._clock()
        elif self._failed.pop(key, None) is not None:
            self.on_fresh(key[0])
            if self.serving_stale:
                self.serving_stale = False
                logger.info("upstreams answer again: fresh answers")
        ttl = cache_ttl(answer)
        limit = self._max_ttl_s if answer.rrsets else self._max_negative_ttl_s
        ttl = min(ttl, limit)
        answer = replace(answer, expires_in=float(ttl))
        if ttl > 0 and answer.wire_size <= self._max_answer_bytes:
            now = self._clock()
            self._entries.expire(now)
            while len(self._entries) >= self._max_entries:
                self._entries.popitem()
            self._entries[key] = _Entry(answer, now, now + ttl, entry_cost(answer))
        elif ttl > 0:
            self._stats.forward_not_cached += 1
        return answer
