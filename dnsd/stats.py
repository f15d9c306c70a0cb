"""Plain counters shared by every stage; read by logs and tests (and later /metrics).

Counters are bare attributes so the hot path pays one attribute increment, nothing more.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Stats:
    queries_fast: int = 0  # answered from the packed-answer cache
    queries_slow: int = 0  # went through the resolver chain
    formerr: int = 0
    notimp: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> packets
    # (qtype, rcode, transport) -> answers given on the miss path
    answers: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    upstream_queries: int = 0
    upstream_errors: int = 0
    upstream_mismatched: int = 0
    forward_cache_hits: int = 0
    forward_cache_misses: int = 0
    forward_coalesced: int = 0
    forward_not_cached: int = 0  # answers too large to keep
    forward_over_budget: int = 0  # questions refused upstream: too many already pending
    upstream_scrubbed: int = 0  # upstream records dropped: not part of the answer asked for
    tcp_connections: int = 0
    tcp_refused: int = 0
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

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1
