"""Plain counters shared by every stage; ``metrics`` exports them at scrape time, tests read
them directly.

Counters are bare attributes (and ``Durations`` plain lists) so the hot path pays an
increment, nothing more; no stage imports a metrics library.

Threads: a bare attribute counter has exactly one writer thread (the event loop, or the one
source thread named beside it), so ``+=`` loses nothing and a reader on another thread sees
a whole int.  Counts bumped on several threads (the UDP listener threads and the loop: the
packets screened, dropped and refused) are ``ThreadCounts``: each thread adds to a table of
its own, summed when read.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import ItemsView
from dataclasses import dataclass, field

# Upper bounds (seconds) of the duration buckets, as CoreDNS's request_duration_seconds.
DURATION_BUCKETS_S = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                      0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)  # fmt: skip


@dataclass
class Durations:
    """A histogram as plain numbers: counts per bucket (the last one: above every bound)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS_S) + 1))
    total_s: float = 0.0

    def observe(self, seconds: float, times: int = 1) -> None:
        self.counts[bisect_left(DURATION_BUCKETS_S, seconds)] += times
        self.total_s += seconds * times


class ThreadCounts:
    """Counts by key that several threads bump without losing an increment: each thread adds
    to a dict of its own (no lock on the way in); a reader sums the threads' dicts (each
    copied in one C call, whole under the GIL)."""

    def __init__(self) -> None:
        self._mine = threading.local()
        self._tables: list[dict[str, int]] = []
        self._lock = threading.Lock()  # guards ``_tables`` (a thread's first count)

    def add(self, key: str, n: int = 1) -> None:
        try:
            table: dict[str, int] = self._mine.table
        except AttributeError:
            table = self._mine.table = {}
            with self._lock:
                self._tables.append(table)
        table[key] = table.get(key, 0) + n

    def totals(self) -> Counter[str]:
        with self._lock:
            tables = list(self._tables)
        total: Counter[str] = Counter()
        for table in tables:
            total.update(dict(table))
        return total

    def __getitem__(self, key: str) -> int:
        return self.totals()[key]

    def items(self) -> ItemsView[str, int]:
        return self.totals().items()


# Every reason a packet is dropped (or answered at once) for, so /metrics shows each one from
# the start at 0: a first drop then shows in rate() and increase() (Prometheus' advice for
# label values known in advance).  tests/test_prometheus.py checks the code uses no other.
DROP_REASONS = (
    "short", "not a query", "query too long for udp (TC sent)", "handler error",
    "too many queued", "too many queued from one client", "too many pending",
    "too many misses from one client", "too many misses from one network",
    "too many misses in all (heaviest networks first)",
    "too many misses from one client, past its TC replies (no reply)",
    "reply too big for the path (TC sent)",
    "send failed",
)  # fmt: skip
UPSTREAM_RCODES = ("NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED")  # shown from the start

FORMERR = "formerr"
NOTIMP = "notimp"


@dataclass
class Stats:
    queries_slow: int = 0  # went through the resolver chain (the event loop)
    # Packets answered FORMERR / NOTIMP from their bytes (``FORMERR``, ``NOTIMP``) and
    # dropped (reason -> packets): counted on the listener threads and the loop.
    refused_packets: ThreadCounts = field(default_factory=ThreadCounts)
    dropped: ThreadCounts = field(default_factory=ThreadCounts)
    # (zone, qtype, rcode, transport) -> answers given on the miss path
    answers: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    # (transport, path) -> how long answers took; path "cache": the UDP listener threads' CPU
    # time shared among the hits (wire/udp.HitTimer)
    durations: defaultdict[tuple[str, str], Durations] = field(
        default_factory=lambda: defaultdict(Durations)
    )
    # Per upstream ("10.0.0.53:53"): questions sent, (upstream, rcode) replies, failures
    # (timeouts, refused connections, bad replies) and reply times.
    upstream_requests: Counter[str] = field(default_factory=Counter)
    upstream_responses: Counter[tuple[str, str]] = field(default_factory=Counter)
    upstream_failures: Counter[str] = field(default_factory=Counter)
    upstream_durations: defaultdict[str, Durations] = field(
        default_factory=lambda: defaultdict(Durations)
    )
    upstream_queries: int = 0
    upstream_errors: int = 0
    upstream_mismatched: int = 0
    forward_cache_hits: int = 0
    forward_cache_misses: int = 0
    forward_coalesced: int = 0
    forward_not_cached: int = 0  # answers too large to keep
    forward_stale_answers: int = 0  # expired answers served while upstreams failed
    forward_prefetches: int = 0  # popular answers refreshed ahead of their expiry
    forward_prefetch_skipped: int = 0  # ... not, MAX_PREFETCHES being upstream already
    forward_failures_cached: int = 0  # SERVFAIL at once: the name failed a moment ago
    forward_over_budget: int = 0  # questions refused upstream: too many already pending
    upstream_scrubbed: int = 0  # upstream records dropped: not part of the answer asked for
    forward_entered_zone: int = 0  # upstream chains into our zones, completed locally
    # Answers completed across an upstream wait whose store names changed meanwhile: built
    # again; still overtaken after every rebuild: sent once, never cached.
    answers_rebuilt: int = 0
    answers_overtaken: int = 0
    query_log_skipped: int = 0  # query log lines left out: over log.queries_per_second
    forward_rebind_refused: int = 0  # upstream answers with private addresses (stop_rebind)
    tcp_connections: int = 0
    tcp_refused: int = 0
    tcp_idle_closed: int = 0  # idle connections closed to give a new one their slot
    reloads: int = 0
    reload_errors: int = 0
    docker_events: int = 0
    docker_reconnects: int = 0
    docker_resyncs: int = 0
    bad_labels: int = 0
    etcd_bad_keys: int = 0
    etcd_updates: int = 0
    etcd_published: int = 0
    etcd_lease_grants: int = 0
    etcd_lease_renewals: int = 0
    etcd_lease_losses: int = 0  # leases found gone (expired, or revoked by someone else)

    @property
    def formerr(self) -> int:
        return self.refused_packets[FORMERR]

    @property
    def notimp(self) -> int:
        return self.refused_packets[NOTIMP]

    def drop(self, reason: str) -> None:
        self.dropped.add(reason)
