"""Wiring and lifecycle only: sources -> record store -> resolver chain -> wire (UDP, TCP).

Startup reads like a table of contents; shutdown is ordered: stop reading -> drain in-flight
answers with a timeout -> cancel the rest.  Raises ``StartupError`` for problems the operator
must fix (a busy port); never calls sys.exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from dnsd import dns_sd
from dnsd.config import Config
from dnsd.errors import DnsdError
from dnsd.hostport import format_hostport, parse_hostport
from dnsd.logs import Throttled, event
from dnsd.metrics import Metrics
from dnsd.records import RecordStore
from dnsd.resolve.acl import Acl
from dnsd.resolve.budget import UpstreamBudget, limit_from_nofile
from dnsd.resolve.cache import ForwardCache
from dnsd.resolve.chain import ResolverChain
from dnsd.resolve.forward import (
    Forwarder,
    Upstream,
    parse_upstreams,
    resolv_conf_upstreams,
)
from dnsd.resolve.local import LocalZone
from dnsd.resolve.loop_detector import LoopDetector
from dnsd.resolve.rebind import RebindGuard
from dnsd.source_setup import build_sources, static_settings
from dnsd.sources.docker import DockerSource
from dnsd.sources.etcd import EtcdSource
from dnsd.sources.lifecycle import ABSENT, Source
from dnsd.sources.static import admission
from dnsd.stats import Stats
from dnsd.wire.answer_cache import SWEEP_S, AnswerCache
from dnsd.wire.query import QueryHandler
from dnsd.wire.query_log import QueryLog
from dnsd.wire.rrl import ResponseRateLimit, RrlSettings
from dnsd.wire.tcp import TcpServer, bind_tcp
from dnsd.wire.udp import HitTimer, UdpServer, bind_udp

logger = logging.getLogger(__name__)
_reloads_logged = Throttled(logger, interval_s=10.0)

DRAIN_TIMEOUT_S = 1.0
# SIGTERM to exit, whatever dnsd is doing (dnsd.shutdown): the orderly stop (withdraw this
# node's etcd keys, drain answers in flight) takes at most about 2 x DRAIN_TIMEOUT_S.
SHUTDOWN_DEADLINE_S = 3.0


class StartupError(DnsdError):
    """dnsd cannot start as configured (the message says why)."""


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
        """Load the static zone, build the answer path, serve HTTP, listen, then run the
        sources (each source's ``run``), in that order."""
        loaded = self.static.load()
        logger.info("static records loaded: %d", loaded, extra=event("static_loaded", "static"))
        acl = Acl(self.config.server.allow_recursion)
        answer_cache = self._answer_cache(acl)
        query_log = None
        if self.config.log.queries:
            query_log = QueryLog(
                lines_per_second=self.config.log.queries_per_second, stats=self.stats
            )
        loop_detector, handler = self._resolver(acl, answer_cache, query_log)
        self._collect(answer_cache)
        await self._serve_http()
        await self._listen(acl, handler, answer_cache, query_log)
        self._tasks.append(asyncio.create_task(_sweep_answers(answer_cache)))
        if loop_detector is not None and self.forwarder is not None:  # listeners are up: probe now
            self._tasks.append(
                asyncio.create_task(loop_detector.probe(list(self.forwarder.upstreams)))
            )
        for source in self.sources:
            self._tasks.append(asyncio.create_task(source.run(), name=f"source {source.name}"))

    def _answer_cache(self, acl: Acl) -> AnswerCache:
        server = self.config.server
        answer_cache = AnswerCache(
            acl.allows,
            server.answer_cache_size,
            server.answer_cache_bytes,
            recursion_decided=acl.decided,
            max_udp_size=server.max_udp_size,
        )
        self.store.subscribe(answer_cache.invalidate)
        return answer_cache

    def _resolver(
        self, acl: Acl, answer_cache: AnswerCache, query_log: QueryLog | None
    ) -> tuple[LoopDetector | None, QueryHandler]:
        """Local zone -> forwarding cache -> forwarder, and the handler that packs answers."""
        server = self.config.server
        local = LocalZone(
            self.store, server.zones, negative_ttl=server.negative_ttl, loading=self._loading()
        )
        forward = self._forwarding()
        budget = UpstreamBudget(
            limit_from_nofile(self.config.forward.max_pending, server.tcp_max_connections),
            self.config.forward.max_pending_per_client,
        )
        loop_detector = None
        if self.forwarder is not None:
            loop_detector = LoopDetector(self.forwarder.probe, self.forwarder.drop)
        if forward is not None:
            answer_cache.on_popular = _prefetcher(forward)
            forward.on_fresh = lambda qname: answer_cache.invalidate({qname})
            if self.forwarder is not None:
                self.forwarder.on_recovered = forward.upstreams_back
        chain = ResolverChain(local, forward, acl, budget, self.stats, loop_detector)
        handler = QueryHandler(
            chain,
            self.stats,
            answer_cache,
            max_udp_size=server.max_udp_size,
            recursion_available=forward is not None,
            query_log=query_log,
        )
        return loop_detector, handler

    def _loading(self) -> Callable[[str], bool]:
        """Whether a zone may still lack names: a source that fills it (Docker its zone, etcd
        every zone) has not applied its first full load, and is not absent.  Once none is
        waiting, never again (later outages serve what was loaded; a Docker absent then and
        started later is not waited for)."""
        holders: list[tuple[Source, str | None]] = []  # None: every zone
        if self.docker is not None:
            holders.append((self.docker, self.config.docker.zone))
        if self.etcd is not None:
            holders.append((self.etcd, None))
        loaded = not holders

        def loading(zone: str) -> bool:
            nonlocal loaded
            if loaded:
                return False
            waiting = [
                fills
                for source, fills in holders
                if not (health := source.health()).synced and health.state != ABSENT
            ]
            loaded = not waiting
            return any(fills is None or fills == zone for fills in waiting)

        return loading

    def _collect(self, answer_cache: AnswerCache) -> None:
        """What /metrics reads besides the counters in ``Stats``."""
        collector = self.metrics.collector
        collector.answer_cells = lambda: answer_cache.cells
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

    async def _listen(
        self,
        acl: Acl,
        handler: QueryHandler,
        answer_cache: AnswerCache,
        query_log: QueryLog | None,
    ) -> None:
        """A UDP listener thread and a TCP server per ``server.listen`` address."""
        server = self.config.server
        rrl = None
        if self.config.rrl.enabled:
            limits = self.config.rrl
            rrl = self.rrl = ResponseRateLimit(
                RrlSettings(
                    limits.responses_per_second, limits.slip, limits.ipv4_prefix, limits.ipv6_prefix
                ),
                exempt=acl.allows,
            )
        for entry in server.listen:
            host, port = parse_hostport(entry, 53)
            udp_sock, tcp_sock = _bind_pair(host, port)
            udp = UdpServer(
                udp_sock, handler, answer_cache, self.stats, rrl=rrl, query_log=query_log,
                misses_per_client=server.udp_miss_rate_per_client,
                misses_per_prefix=server.udp_miss_rate_per_network,
                misses_total=server.udp_miss_rate_total,
            )  # fmt: skip
            tcp = TcpServer(
                tcp_sock,
                handler,
                self.stats,
                idle_timeout_s=server.tcp_idle_timeout,
                max_connections=server.tcp_max_connections,
                max_per_client=server.tcp_max_connections_per_client,
            )
            udp.start()
            await tcp.start()
            self.udp.append(udp)
            self.tcp.append(tcp)
            logger.info(
                "listening on %s (udp+tcp)", format_hostport(*udp.address), extra=event("listening")
            )

    def _forwarding(self) -> ForwardCache | None:
        forward = self.config.forward
        domains = {d: parse_upstreams(entries) for d, entries in forward.domains.items()}
        for domain, listed in domains.items():
            logger.info("forwarding %s to %s", domain, ", ".join(str(u) for u in listed))
        upstreams: list[Upstream] = []
        if not forward.enabled:
            logger.info("forwarding off: other names outside the zones get REFUSED")
        else:
            upstreams = self._upstreams()
            if upstreams:
                logger.info("forwarding to %s", ", ".join(str(u) for u in upstreams))
            else:
                logger.warning("no upstream resolvers found: other names get REFUSED")
        if not upstreams and not domains:
            return None
        forwarder = self.forwarder = Forwarder(
            upstreams,
            self.stats,
            timeout_s=forward.timeout,
            domains=domains,
            tls_ca=forward.tls_ca,
            zones=tuple(self.config.server.zones),
            max_fails=forward.max_fails,
            policy=forward.policy,
            probe_interval_s=forward.health_check,
            failure_ttl_s=forward.failure_ttl,
            rebind=RebindGuard([*forward.rebind_allowed, *domains])
            if forward.stop_rebind
            else None,
        )
        return ForwardCache(
            forwarder,
            self.stats,
            max_entries=forward.cache_size,
            max_ttl_s=forward.max_ttl,
            max_negative_ttl_s=forward.max_negative_ttl,
            stale_for_s=forward.stale_for,
            max_bytes=forward.cache_bytes,
            max_answer_bytes=forward.max_cached_answer,
            recovered_at=lambda: forwarder.recovered_at,
        )

    def _upstreams(self) -> list[Upstream]:
        forward = self.config.forward
        if forward.upstreams:
            return parse_upstreams(forward.upstreams)
        own = {parse_hostport(entry, 53) for entry in self.config.server.listen}
        try:
            with open(forward.resolv_conf, encoding="utf-8") as handle:
                return resolv_conf_upstreams(handle.read(), own)
        except OSError as exc:
            logger.warning("cannot read %s: %s", forward.resolv_conf, exc.strerror)
            return []

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


def _prefetcher(forward: ForwardCache) -> Callable[[tuple[str, int, int]], None]:
    """The answer cache's popular-answer hook (a listener thread) -> a prefetch on the loop."""
    loop = asyncio.get_running_loop()

    def hand_over(question: tuple[str, int, int]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: shutting down
            loop.call_soon_threadsafe(forward.prefetch, *question)

    return hand_over


def _bind_pair(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP sockets on the same address (port 0: the kernel picks one for both)."""
    try:
        udp = bind_udp(host, port)
    except OSError as exc:
        raise StartupError(_bind_message(host, port, "udp", exc)) from None
    port = udp.getsockname()[1]
    try:
        tcp = bind_tcp(host, port)
    except OSError as exc:
        udp.close()
        raise StartupError(_bind_message(host, port, "tcp", exc)) from None
    return udp, tcp


def _bind_message(host: str, port: int, proto: str, exc: OSError) -> str:
    reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
    return f"cannot listen on {format_hostport(host, port)}/{proto}: {reason}"


async def _sweep_answers(answer_cache: AnswerCache) -> None:
    """Forwarded answers leave the UDP threads' fast tables when due for a refresh."""
    while True:
        await asyncio.sleep(SWEEP_S)
        answer_cache.sweep(time.monotonic())
