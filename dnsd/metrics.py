"""Every Prometheus metric dnsd exports, defined once, in a registry of its own per daemon.

No stage touches prometheus-client: they bump plain numbers (``Stats``, its ``Durations``
histograms, the packed-answer cache's per-label cells) that the collector below reads at scrape
time.  Names and labels follow CoreDNS where it has the same thing (requests by zone, type and
transport; request durations; forward requests, responses and durations per upstream).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Info, ProcessCollector, disable_created_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from dnsd import __version__
from dnsd.sources.lifecycle import ABSENT, DEGRADED, DOWN, OK
from dnsd.stats import DROP_REASONS, DURATION_BUCKETS_S, UPSTREAM_RCODES, Durations, Stats

SOURCE_STATES = (OK, DEGRADED, DOWN, ABSENT)

disable_created_metrics()  # no *_created series next to every counter and histogram


class Metrics:
    def __init__(self, stats: Stats) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.collector = StatsCollector(stats)
        self.registry.register(self.collector)
        # As CoreDNS exports them: the build, and the process (CPU, memory, open files).
        Info("dnsd_build", "dnsd's version and Python.", registry=self.registry).info(
            {"version": __version__, "python": platform.python_version()}
        )
        ProcessCollector(registry=self.registry)


class StatsCollector(Collector):
    """Exports the plain counters of ``Stats`` and the daemon's state at scrape time."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        # (zone, type, rcode, transport) -> packed-answer cache hits
        self.answer_hits: Callable[[], dict[tuple[str, str, str, str], int]] = dict
        self.before_collect: Callable[[], None] = lambda: None  # e.g. time the cache hits
        self.records_by_source: Callable[[], dict[str, int]] = dict
        self.rejections: Callable[[], Mapping[tuple[str, str], int]] = dict
        # Wired by the daemon when the part exists: (revision, reconnects), (dropped, slipped).
        self.etcd: Callable[[], tuple[int, int]] | None = None
        self.rrl: Callable[[], tuple[int, int] | None] = lambda: None
        self.publishing = False
        self.lease: Callable[[], tuple[float | None, int]] | None = None  # (left s, TTL s)
        self.sources: Callable[[], list[tuple[str, str]]] = list  # (source, state)
        self.clock: Callable[[], float] = time.time
        self.upstreams: Callable[[], Mapping[str, bool]] = dict  # upstream -> healthy

    def collect(self) -> Iterator[Metric]:
        self.before_collect()
        stats = self.stats
        queries = CounterMetricFamily(
            "dnsd_queries", "Queries answered, by zone (the owned zone of the name, '.' for "
            "any other), type, rcode, transport and path (cache: the packed-answer cache; "
            "resolver: the miss path).",
            labels=["zone", "type", "rcode", "transport", "path"],
        )  # fmt: skip
        for (zone, qtype, rcode, transport), count in sorted(stats.answers.items()):
            queries.add_metric([zone, qtype, rcode, transport, "resolver"], count)
        for (zone, qtype, rcode, transport), count in sorted(self.answer_hits().items()):
            queries.add_metric([zone, qtype, rcode, transport, "cache"], count)
        yield queries
        durations = HistogramMetricFamily(
            "dnsd_request_duration_seconds", "Time to answer a query, by transport and path "
            "(cache hits: the UDP listener threads' CPU time, shared among the hits since the last "
            "scrape).",
            labels=["transport", "path"],
        )  # fmt: skip
        for (transport, path), histogram in sorted(stats.durations.items()):
            durations.add_metric([transport, path], *_buckets(histogram))
        yield durations
        requests = CounterMetricFamily("dnsd_forward_requests", "Questions sent to each "
                                       "upstream.", labels=["to"])  # fmt: skip
        known = list(self.upstreams())  # each configured upstream's series from the start
        for to, count in sorted({**dict.fromkeys(known, 0), **stats.upstream_requests}.items()):
            requests.add_metric([to], count)
        yield requests
        responses = CounterMetricFamily("dnsd_forward_responses", "Replies from each upstream, "
                                        "by rcode.", labels=["to", "rcode"])  # fmt: skip
        started = {(to, rcode): 0 for to in known for rcode in UPSTREAM_RCODES}
        for (to, rcode), count in sorted({**started, **stats.upstream_responses}.items()):
            responses.add_metric([to, rcode], count)
        yield responses
        failures = CounterMetricFamily("dnsd_forward_failures", "Questions an upstream did not "
                                       "answer usably (timeout, refused, bad reply).",
                                       labels=["to"])  # fmt: skip
        for to, count in sorted({**dict.fromkeys(known, 0), **stats.upstream_failures}.items()):
            failures.add_metric([to], count)
        yield failures
        upstream = HistogramMetricFamily("dnsd_forward_request_duration_seconds", "Time each "
                                         "upstream took to reply.", labels=["to"])  # fmt: skip
        for to, histogram in sorted(stats.upstream_durations.items()):
            upstream.add_metric([to], *_buckets(histogram))
        yield upstream
        yield _counter("dnsd_answer_cache_hits", "Queries (UDP and TCP) answered from the "
                       "packed-answer cache.", sum(self.answer_hits().values()))  # fmt: skip
        yield _counter("dnsd_answer_cache_misses", "Queries that went through the resolver.",
                       stats.queries_slow)  # fmt: skip
        yield _counter("dnsd_forward_cache_hits", "Forwarded questions answered from the "
                       "forwarding cache.", stats.forward_cache_hits)  # fmt: skip
        yield _counter("dnsd_forward_cache_misses", "Forwarded questions not in the cache.",
                       stats.forward_cache_misses)  # fmt: skip
        yield _counter("dnsd_forward_coalesced", "Questions that waited for an identical one "
                       "already upstream.", stats.forward_coalesced)  # fmt: skip
        yield _counter("dnsd_forward_stale_answers", "Expired answers served (TTL 30 s) because "
                       "no upstream answered in time (RFC 8767 serve-stale).",
                       stats.forward_stale_answers)  # fmt: skip
        yield _counter("dnsd_forward_prefetches", "Popular forwarded answers refreshed before "
                       "they expired.", stats.forward_prefetches)  # fmt: skip
        yield _counter("dnsd_forward_prefetch_skipped", "Prefetches skipped: the most allowed "
                       "at once were upstream already.",
                       stats.forward_prefetch_skipped)  # fmt: skip
        yield _counter("dnsd_forward_failures_cached", "Questions answered SERVFAIL at once: "
                       "the name failed at every upstream less than forward.failure_ttl ago.",
                       stats.forward_failures_cached)  # fmt: skip
        yield _counter("dnsd_forward_not_cached", "Forwarded answers passed on but not kept: "
                       "larger than forward.max_cached_answer.",
                       stats.forward_not_cached)  # fmt: skip
        yield _counter("dnsd_forward_over_budget", "Questions answered SERVFAIL without asking "
                       "upstream: too many pending, in all or for the client.",
                       stats.forward_over_budget)  # fmt: skip
        yield _counter("dnsd_upstream_scrubbed", "Upstream records dropped: not part of the "
                       "answer to the question asked, or at a name in dnsd's own zones.",
                       stats.upstream_scrubbed)  # fmt: skip
        yield _counter("dnsd_forward_entered_zone", "Forwarded answers whose CNAME chain "
                       "entered dnsd's zones: cut there and completed from the local zone.",
                       stats.forward_entered_zone)  # fmt: skip
        yield _counter("dnsd_answers_rebuilt", "Answers completed through an upstream and "
                       "built again: a name they were built from changed during the wait.",
                       stats.answers_rebuilt)  # fmt: skip
        yield _counter("dnsd_answers_overtaken", "Answers still overtaken by store changes "
                       "after every rebuild: sent once, not cached.",
                       stats.answers_overtaken)  # fmt: skip
        yield _counter("dnsd_forward_rebind_refused", "Forwarded answers refused: they held "
                       "a private, loopback or link-local address (forward.stop_rebind).",
                       stats.forward_rebind_refused)  # fmt: skip
        yield _counter("dnsd_query_log_skipped", "Query log lines left out: over "
                       "log.queries_per_second.", stats.query_log_skipped)  # fmt: skip
        yield _counter("dnsd_upstream_queries", "Upstream queries answered.",
                       stats.upstream_queries)  # fmt: skip
        yield _counter("dnsd_upstream_errors", "Upstream queries that failed (timeout, "
                       "refused, bad reply).", stats.upstream_errors)  # fmt: skip
        yield _counter("dnsd_upstream_mismatched", "Upstream replies dropped: wrong ID or "
                       "question.", stats.upstream_mismatched)  # fmt: skip
        dropped = CounterMetricFamily("dnsd_dropped_packets", "Packets dropped, by reason.",
                                      labels=["reason"])  # fmt: skip
        counted = {**dict.fromkeys(DROP_REASONS, 0), **dict(stats.dropped.items())}
        for reason, count in sorted(counted.items()):
            dropped.add_metric([reason], count)
        yield dropped
        yield _counter("dnsd_tcp_connections", "TCP connections accepted.",
                       stats.tcp_connections)  # fmt: skip
        yield _counter("dnsd_tcp_refused", "TCP connections closed at once: over the limit.",
                       stats.tcp_refused)  # fmt: skip
        yield _counter("dnsd_tcp_idle_closed", "Idle TCP connections closed to give a new "
                       "connection their slot (every slot was taken).",
                       stats.tcp_idle_closed)  # fmt: skip
        healthy = GaugeMetricFamily("dnsd_forward_upstream_healthy", "1 while an upstream "
                                    "is asked, 0 while it is down and probed.",
                                    labels=["to"])  # fmt: skip
        for to, up in sorted(self.upstreams().items()):
            healthy.add_metric([to], 1 if up else 0)
        yield healthy
        records = GaugeMetricFamily("dnsd_records", "Records held, by source.",
                                    labels=["source"])  # fmt: skip
        for source, count in sorted(self.records_by_source().items()):
            records.add_metric([source], count)
        yield records
        refused = CounterMetricFamily(
            "dnsd_records_refused", "Records a source offered that were not served, by source "
            "and reason (outside zones, invalid, static name, name owned by another container).",
            labels=["source", "reason"],
        )  # fmt: skip
        for (source, why), count in sorted(self.rejections().items()):
            refused.add_metric([source, why], count)
        yield refused
        yield _counter("dnsd_reloads", "Static reloads (SIGHUP or file change).", stats.reloads)
        yield _counter("dnsd_reload_errors", "Static reloads that failed (the last good records "
                       "stay).", stats.reload_errors)  # fmt: skip
        yield _counter("dnsd_docker_events", "Docker events received.", stats.docker_events)
        yield _counter("dnsd_docker_reconnects", "Docker event stream reconnects.",
                       stats.docker_reconnects)  # fmt: skip
        yield _counter("dnsd_docker_resyncs", "Full Docker resyncs.", stats.docker_resyncs)
        yield _counter("dnsd_bad_labels", "Bad dnsd.* container label values.",
                       stats.bad_labels)  # fmt: skip
        yield GaugeMetricFamily("dnsd_etcd_bad_keys", "etcd keys skipped as malformed.",
                                value=stats.etcd_bad_keys)  # fmt: skip
        yield _counter("dnsd_etcd_updates", "etcd key changes applied.", stats.etcd_updates)
        yield _counter("dnsd_etcd_lease_renewals", "Lease keep-alives sent.",
                       stats.etcd_lease_renewals)  # fmt: skip
        yield _counter("dnsd_etcd_lease_grants", "Leases granted (1 plus one per loss).",
                       stats.etcd_lease_grants)  # fmt: skip
        yield _counter("dnsd_etcd_lease_losses", "Leases found gone (expired while etcd was "
                       "out of reach, or revoked by someone else): published again under a "
                       "new one.", stats.etcd_lease_losses)  # fmt: skip
        yield from self._lease_metrics()
        states = GaugeMetricFamily("dnsd_source_state", "1 for the state each source is in "
                                   "(ok, degraded: synced once and serving what it had, down: "
                                   "never synced, absent: optional and not there), else 0.",
                                   labels=["source", "state"])  # fmt: skip
        for source, state in self.sources():
            for each in SOURCE_STATES:
                states.add_metric([source, each], 1 if each == state else 0)
        yield states
        if self.etcd is not None:
            revision, reconnects = self.etcd()
            yield GaugeMetricFamily("dnsd_etcd_revision", "Newest etcd revision the "
                                    "watch has read.", value=revision)  # fmt: skip
            yield GaugeMetricFamily("dnsd_etcd_reconnects", "etcd watch reconnects.",
                                    value=reconnects)  # fmt: skip
        if self.publishing:
            yield GaugeMetricFamily("dnsd_etcd_published_keys", "Keys this node holds in etcd.",
                                    value=stats.etcd_published)  # fmt: skip
        limited = self.rrl()
        if limited is not None:
            yield GaugeMetricFamily("dnsd_rrl_dropped", "UDP answers dropped by response rate "
                                    "limiting.", value=limited[0])  # fmt: skip
            yield GaugeMetricFamily("dnsd_rrl_slipped", "UDP answers sent truncated (TC=1) by "
                                    "response rate limiting.", value=limited[1])  # fmt: skip

    def _lease_metrics(self) -> Iterator[Metric]:
        if self.lease is None:
            return
        left_s, ttl_s = self.lease()
        yield GaugeMetricFamily("dnsd_etcd_lease_ttl_seconds", "TTL of this node's etcd lease "
                                "(renewed every third of it).", value=ttl_s)  # fmt: skip
        if left_s is not None:  # none before the first grant
            yield GaugeMetricFamily("dnsd_etcd_lease_expiry_timestamp_seconds", "When this "
                                    "node's etcd lease runs out unless renewed (Unix time).",
                                    value=self.clock() + left_s)  # fmt: skip


def _buckets(histogram: Durations) -> tuple[list[tuple[str, float]], float]:
    """Cumulative (bound, count) pairs and the sum, as HistogramMetricFamily takes them."""
    bounds = [*(repr(b) for b in DURATION_BUCKETS_S), "+Inf"]
    cumulative, running = [], 0
    for bound, count in zip(bounds, histogram.counts, strict=True):
        running += count
        cumulative.append((bound, float(running)))
    return cumulative, histogram.total_s


def _counter(name: str, documentation: str, value: Any) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
