"""The resolver built from the settings, as ``source_setup`` builds the sources: the one place
that turns ``Config`` into the stages of the answer path, in order — local zone -> forwarding
cache -> forwarder — chained.  The daemon calls ``build``, hands the chain to the wire
(``dnsd.wire_setup``) and runs what it returns; no stage imports the config.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from dnsd.config import Config
from dnsd.hostport import parse_hostport
from dnsd.records import RecordStore
from dnsd.resolve.acl import Acl
from dnsd.resolve.budget import UpstreamBudget, limit_from_nofile
from dnsd.resolve.cache import ForwardCache
from dnsd.resolve.chain import ResolverChain, standard_chain
from dnsd.resolve.forward import Forwarder
from dnsd.resolve.local import LocalZone
from dnsd.resolve.loop_detector import LoopDetector
from dnsd.resolve.rebind import RebindGuard
from dnsd.resolve.upstreams import Upstream, parse_upstreams, resolv_conf_upstreams
from dnsd.stats import Stats

logger = logging.getLogger(__name__)


@dataclass
class Resolver:
    """The answer path as built: the chain of stages, and the forwarding parts the daemon
    runs and stops and the wire hooks to its caches (None when nothing is forwarded)."""

    chain: ResolverChain
    forwarder: Forwarder | None = None
    forward_cache: ForwardCache | None = None
    loop_detector: LoopDetector | None = None


def build(
    config: Config,
    store: RecordStore,
    stats: Stats,
    acl: Acl,
    loading: Callable[[str], bool],
) -> Resolver:
    """``loading(zone)``: a source that fills the zone has not loaded it yet (the local zone
    then answers SERVFAIL, not NXDOMAIN)."""
    server = config.server
    local = LocalZone(store, server.zones, negative_ttl=server.negative_ttl, loading=loading)
    forwarder, forward = build_forwarding(config, stats)
    budget = UpstreamBudget(
        limit_from_nofile(config.forward.max_pending, server.tcp_max_connections),
        config.forward.max_pending_per_client,
    )
    loop_detector = None
    if forwarder is not None and forward is not None:
        loop_detector = LoopDetector(forwarder.probe, forwarder.drop)
        forwarder.on_recovered = forward.upstreams_back
    chain = standard_chain(local, forward, acl, budget, stats, loop_detector)
    return Resolver(chain, forwarder, forward, loop_detector)


def build_forwarding(config: Config, stats: Stats) -> tuple[Forwarder | None, ForwardCache | None]:
    """The forwarder and its cache, or (None, None) when no name is forwarded."""
    forward = config.forward
    domains = {d: parse_upstreams(entries) for d, entries in forward.domains.items()}
    for domain, listed in domains.items():
        logger.info("forwarding %s to %s", domain, ", ".join(str(u) for u in listed))
    upstreams: list[Upstream] = []
    if not forward.enabled:
        logger.info("forwarding off: other names outside the zones get REFUSED")
    else:
        upstreams = default_upstreams(config)
        if upstreams:
            logger.info("forwarding to %s", ", ".join(str(u) for u in upstreams))
        else:
            logger.warning("no upstream resolvers found: other names get REFUSED")
    if not upstreams and not domains:
        return None, None
    forwarder = Forwarder(
        upstreams,
        stats,
        timeout_s=forward.timeout,
        domains=domains,
        tls_ca=forward.tls_ca,
        zones=tuple(config.server.zones),
        max_fails=forward.max_fails,
        policy=forward.policy,
        probe_interval_s=forward.health_check,
        failure_ttl_s=forward.failure_ttl,
        rebind=RebindGuard([*forward.rebind_allowed, *domains]) if forward.stop_rebind else None,
    )
    cache = ForwardCache(
        forwarder,
        stats,
        max_entries=forward.cache_size,
        max_ttl_s=forward.max_ttl,
        max_negative_ttl_s=forward.max_negative_ttl,
        stale_for_s=forward.stale_for,
        max_bytes=forward.cache_bytes,
        max_answer_bytes=forward.max_cached_answer,
        recovered_at=lambda: forwarder.recovered_at,
    )
    return forwarder, cache


def default_upstreams(config: Config) -> list[Upstream]:
    """``forward.upstreams``, else the nameservers of ``forward.resolv_conf`` that are not
    dnsd itself."""
    forward = config.forward
    if forward.upstreams:
        return parse_upstreams(forward.upstreams)
    own = {parse_hostport(entry, 53) for entry in config.server.listen}
    try:
        with open(forward.resolv_conf, encoding="utf-8") as handle:
            return resolv_conf_upstreams(handle.read(), own)
    except OSError as exc:
        logger.warning("cannot read %s: %s", forward.resolv_conf, exc.strerror)
        return []
