"""Every Prometheus metric dnsd exports, defined once, in a registry of its own per daemon.

The hot path never touches prometheus-client: it bumps plain integers (``Stats``, the
packed-answer cache's per-label cells) that the collector below reads at scrape time.  Only
the answer latency histogram of the miss path is a live prometheus-client object.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dnsd import __version__
from dnsd.stats import Stats

disable_created_metrics()  # no *_created series next to every counter and histogram

LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                     0.25, 0.5, 1.0, 2.5)  # fmt: skip


class Metrics:
    def __init__(self, stats: Stats) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "dnsd_answer_latency_seconds",
            "Time to answer a query that missed the packed-answer cache, by transport.",
            ["transport"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "dnsd_upstream_latency_seconds",
            "Time an upstream resolver took to answer.",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
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
        self.answer_cells: Callable[[], dict[tuple[str, str], list[int]]] = dict
        self.records_by_source: Callable[[], dict[str, int]] = dict
        self.rejections: Callable[[], Mapping[tuple[str, str], int]] = dict
        self.extra: Callable[[], dict[str, float]] = dict

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        queries = CounterMetricFamily(
            "dnsd_queries", "Queries answered, by type, rcode, transport and path (cache: the "
            "packed-answer cache; resolver: the miss path).",
            labels=["type", "rcode", "transport", "path"],
        )  # fmt: skip
        for (qtype, rcode, transport), count in sorted(stats.answers.items()):
            queries.add_metric([qtype, rcode, transport, "resolver"], count)
        for (qtype, rcode), cell in sorted(self.answer_cells().items()):
            queries.add_metric([qtype, rcode, "udp", "cache"], cell[0])
        yield queries
        yield _counter("dnsd_answer_cache_hits", "UDP queries answered from the packed-answer "
                       "cache.", sum(c[0] for c in self.answer_cells().values()))  # fmt: skip
        yield _counter("dnsd_answer_cache_misses", "Queries that went through the resolver.",
                       stats.queries_slow)  # fmt: skip
        yield _counter("dnsd_forward_cache_hits", "Forwarded questions answered from the "
                       "forwarding cache.", stats.forward_cache_hits)  # fmt: skip
        yield _counter("dnsd_forward_cache_misses", "Forwarded questions not in the cache.",
                       stats.forward_cache_misses)  # fmt: skip
        yield _counter("dnsd_forward_coalesced", "Questions that waited for an identical one "
                       "already upstream.", stats.forward_coalesced)  # fmt: skip
        yield _counter("dnsd_forward_not_cached", "Forwarded answers passed on but not kept: "
                       "larger than forward.max_cached_answer.",
                       stats.forward_not_cached)  # fmt: skip
        yield _counter("dnsd_forward_over_budget", "Questions answered SERVFAIL without asking "
                       "upstream: too many pending, in all or for the client.",
                       stats.forward_over_budget)  # fmt: skip
        yield _counter("dnsd_upstream_scrubbed", "Upstream records dropped: not part of the "
                       "answer to the question asked.", stats.upstream_scrubbed)  # fmt: skip
        yield _counter("dnsd_upstream_queries", "Upstream queries answered.",
                       stats.upstream_queries)  # fmt: skip
        yield _counter("dnsd_upstream_errors", "Upstream queries that failed (timeout, "
                       "refused, bad reply).", stats.upstream_errors)  # fmt: skip
        yield _counter("dnsd_upstream_mismatched", "Upstream replies dropped: wrong ID or "
                       "question.", stats.upstream_mismatched)  # fmt: skip
        dropped = CounterMetricFamily("dnsd_dropped_packets", "Packets dropped, by reason.",
                                      labels=["reason"])  # fmt: skip
        for reason, count in sorted(stats.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped
        yield _counter("dnsd_tcp_connections", "TCP connections accepted.",
                       stats.tcp_connections)  # fmt: skip
        yield _counter("dnsd_tcp_refused", "TCP connections closed at once: over the limit.",
                       stats.tcp_refused)  # fmt: skip
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
        for name, value in sorted(self.extra().items()):
            yield GaugeMetricFamily(name, _EXTRA_HELP.get(name, name), value=value)


_EXTRA_HELP = {
    "dnsd_etcd_revision": "Last etcd revision the mirror applied.",
    "dnsd_etcd_reconnects": "etcd watch reconnects.",
    "dnsd_etcd_published_keys": "Keys this node holds in etcd.",
    "dnsd_rrl_dropped": "UDP answers dropped by response rate limiting.",
    "dnsd_rrl_slipped": "UDP answers sent truncated (TC=1) by response rate limiting.",
}


def _counter(name: str, documentation: str, value: Any) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
