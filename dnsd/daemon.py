"""Wiring and lifecycle only: sources -> record store -> resolver chain -> wire (UDP, TCP).

Startup reads like a table of contents; shutdown is ordered: stop reading -> drain in-flight
answers with a timeout -> cancel the rest.  Raises ``StartupError`` for problems the operator
must fix (a busy port); never calls sys.exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from dnsd import dns_sd, resolve_setup, wire_setup
from dnsd.config import Config
from dnsd.errors import StartupError
from dnsd.heap import settle_after_start
from dnsd.hostport import parse_hostport
from dnsd.logs import Throttled, event
from dnsd.metrics import Metrics
from dnsd.records import RecordStore
from dnsd.resolve.acl import Acl
from dnsd.resolve.forward import Forwarder
from dnsd.source_setup import build_sources, first_loads, static_settings
from dnsd.sources.docker import DockerSource
from dnsd.sources.etcd import EtcdSource
from dnsd.sources.lifecycle import ABSENT, Source
from dnsd.sources.static import admission
from dnsd.stats import Stats
from dnsd.wire.answer_cache import SWEEP_S, AnswerCache
from dnsd.wire.rrl import ResponseRateLimit
from dnsd.wire.tcp import TcpServer
from dnsd.wire.udp import HitTimer, UdpServer

__all__ = ["SHUTDOWN_DEADLINE_S", "Daemon", "StartupError"]

logger = logging.getLogger(__name__)
_reloads_logged = Throttled(logger, interval_s=10.0)

DRAIN_TIMEOUT_S = 1.0
# SIGTERM to exit, whatever dnsd is doing (dnsd.shutdown): the orderly stop (withdraw this
# node's etcd keys, drain answers in flight) takes at most about 2 x DRAIN_TIMEOUT_S.
SHUTDOWN_DEADLINE_S = 3.0


class Daemon:
    def __init__(self, config: Config, load_config: Callable[[], Config]) -> None:
        self.config = config
        self.stats = Stats()
        self.metrics = Metrics(self.stats)
        self.store = RecordStore(admission(static_settings(config)), derive=dns_sd.derived)
        self.http: Any = None  # dnsd.http.HttpServer once started
        built = build_sources(config, self.store, self.stats, load_config)
        self.static, self.docker = built.static, built.docker
        self.etcd, self.publisher = built.etcd, built.publisher
        self.sources: list[Source] = built.all
        self.rrl: ResponseRateLimit | None = None
        self.forwarder: Forwarder | None = None
        self.udp: list[UdpServer] = []
        self.tcp: list[TcpServer] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Load the static zone, build the answer path (``resolve_setup``) and the wire
        (``wire_setup``), serve HTTP, listen, then run the sources (each source's ``run``),
        in that order."""
        loaded = self.static.load()
        logger.info("static records loaded: %d", loaded, extra=event("static_loaded", "static"))
        config, stats = self.config, self.stats
        acl = Acl(config.server.allow_recursion)
        loading = first_loads(self.docker, config.docker.zone, self.etcd)
        resolver = resolve_setup.build(config, self.store, stats, acl, loading)
        self.forwarder = resolver.forwarder
        answer_cache = wire_setup.build_answer_cache(
            config, acl, self.store, resolver.forward_cache
        )
        query_log = wire_setup.build_query_log(config, stats)
        recursion = resolver.forward_cache is not None
        handler = wire_setup.build_handler(
            config, resolver.chain, stats, answer_cache, query_log, recursion
        )
        self._collect(answer_cache)
        await self._serve_http()
        self.rrl = wire_setup.build_rrl(config, acl)
        self.udp, self.tcp = await wire_setup.listen(
            config, handler, answer_cache, stats, self.rrl, query_log
        )
        self._tasks.append(asyncio.create_task(_sweep_answers(answer_cache)))
        detector, forwarder = resolver.loop_detector, resolver.forwarder
        if detector is not None and forwarder is not None:  # listeners are up: probe now
            self._tasks.append(asyncio.create_task(detector.probe(list(forwarder.upstreams))))
        for source in self.sources:
            self._tasks.append(asyncio.create_task(source.run(), name=f"source {source.name}"))
        first = [s for s in (self.docker, self.etcd) if s is not None]
        self._tasks.append(
            asyncio.create_task(
                settle_after_start(
                    lambda: all(s.health().synced or s.health().state == ABSENT for s in first)
                )
            )
        )

    def _collect(self, answer_cache: AnswerCache) -> None:
        """What /metrics reads besides the counters in ``Stats``."""
        collector = self.metrics.collector
        collector.answer_hits = answer_cache.hits_by_label
        collector.records_by_source = self.store.counts
        collector.rejections = lambda: self.store.rejections
        if self.etcd is not None:
            etcd = self.etcd
            collector.etcd = lambda: (etcd.revision, etcd.reconnects)
        collector.publishing = self.publisher is not None
        if self.publisher is not None:
            publisher = self.publisher
            collector.lease = lambda: (publisher.lease_left_s(), publisher.lease_ttl_s)
        collector.sources = lambda: [(s.name, s.health().state) for s in self.sources]
        collector.upstreams = lambda: self.upstreams
        collector.rrl = self._rrl_counts  # the limiter is made with the listeners
        hit_timer = HitTimer(
            lambda: answer_cache.hits, self.udp, self.stats.durations[("udp", "cache")]
        )  # reads self.udp when collected: the listeners are added later
        collector.before_collect = hit_timer.account

    async def _serve_http(self) -> None:
        if not self.config.http.listen:
            return
        from dnsd.http import HttpServer  # aiohttp only when the endpoint is on

        http_host, http_port = parse_hostport(self.config.http.listen, 9153)
        self.http = HttpServer(
            self, self.metrics.registry, http_host, http_port, self.config.http.request_timeout
        )
        try:
            await self.http.start()
        except OSError as exc:
            raise StartupError(
                f"cannot serve http on {self.config.http.listen}: {exc.strerror}"
            ) from None

    def _rrl_counts(self) -> tuple[int, int] | None:
        return None if self.rrl is None else (self.rrl.dropped, self.rrl.slipped)

    def reload(self) -> None:
        # A signal storm (1,500 SIGHUPs) must not write a line each: once per 10 s, counted.
        _reloads_logged.info("reload", "reload requested")
        self.static.request_reload()

    # --- what /ready and /records read (dnsd.status.StatusView) -------------------------------
    @property
    def listening(self) -> bool:
        return bool(self.udp) and bool(self.tcp) and all(udp.serving for udp in self.udp)

    @property
    def node_id(self) -> str:
        return self.config.etcd.node_id

    @property
    def zones(self) -> Sequence[str]:
        return self.config.server.zones

    @property
    def containers(self) -> DockerSource | None:
        return self.docker

    @property
    def cluster(self) -> EtcdSource | None:
        return self.etcd

    @property
    def upstreams(self) -> dict[str, bool]:
        return self.forwarder.upstream_states() if self.forwarder is not None else {}

    async def stop(self) -> None:
        for udp in self.udp:
            udp.stop_reading()
        for source in self.sources:
            source.stop()
        for task in self._tasks:
            task.cancel()
        if self.forwarder is not None:
            self.forwarder.close()
        # Threads still blocked in I/O after their source's stop_timeout_s are daemon
        # threads: left behind.  The publisher's withdraws this node's keys meanwhile.
        await asyncio.gather(
            *(udp.drain(DRAIN_TIMEOUT_S) for udp in self.udp),
            *(tcp.close(DRAIN_TIMEOUT_S) for tcp in self.tcp),
            *(asyncio.to_thread(s.join, s.stop_timeout_s) for s in self.sources),
        )
        if self.http is not None:
            await self.http.stop()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        logger.info("stopped", extra=event("stopped"))


async def _sweep_answers(answer_cache: AnswerCache) -> None:
    """Forwarded answers leave the UDP threads' fast tables when due for a refresh."""
    while True:
        await asyncio.sleep(SWEEP_S)
        answer_cache.sweep(time.monotonic())
