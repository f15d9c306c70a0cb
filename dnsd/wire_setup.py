"""The wire built from the settings, as ``source_setup`` and ``resolve_setup`` build theirs:
the packed-answer cache (hooked to the record store and the forwarding cache), the handler
that packs the resolver chain's answers, response rate limiting, and a UDP listener thread
and a TCP server per ``server.listen`` address.  The daemon calls these and runs what they
return; no listener imports the config.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable

from dnsd.config import Config
from dnsd.errors import StartupError
from dnsd.hostport import format_hostport, parse_hostport
from dnsd.logs import event
from dnsd.records import RecordStore
from dnsd.resolve.acl import Acl
from dnsd.resolve.cache import ForwardCache
from dnsd.resolve.chain import ResolverChain
from dnsd.stats import Stats
from dnsd.wire.answer_cache import AnswerCache
from dnsd.wire.query import QueryHandler
from dnsd.wire.query_log import QueryLog
from dnsd.wire.rrl import ResponseRateLimit, RrlSettings
from dnsd.wire.tcp import TcpServer, bind_tcp
from dnsd.wire.udp import UdpServer, bind_udp

logger = logging.getLogger(__name__)


def build_answer_cache(
    config: Config, acl: Acl, store: RecordStore, forward: ForwardCache | None
) -> AnswerCache:
    """The packed-answer cache, dropping entries as the store changes them, handing popular
    forwarded answers to the forwarding cache for a prefetch and taking back stale answers
    that a fresh one replaced.  Call on the event loop."""
    server = config.server
    answer_cache = AnswerCache(
        acl.allows,
        server.answer_cache_size,
        server.answer_cache_bytes,
        recursion_decided=acl.decided,
        max_udp_size=server.max_udp_size,
    )
    store.subscribe(answer_cache.invalidate)
    if forward is not None:
        answer_cache.on_popular = _prefetcher(forward)
        forward.on_fresh = lambda qname: answer_cache.invalidate({qname})
    return answer_cache


def build_query_log(config: Config, stats: Stats) -> QueryLog | None:
    if not config.log.queries:
        return None
    return QueryLog(lines_per_second=config.log.queries_per_second, stats=stats)


def build_handler(
    config: Config,
    chain: ResolverChain,
    stats: Stats,
    answer_cache: AnswerCache,
    query_log: QueryLog | None,
    recursion_available: bool,
) -> QueryHandler:
    return QueryHandler(
        chain,
        stats,
        answer_cache,
        max_udp_size=config.server.max_udp_size,
        recursion_available=recursion_available,
        query_log=query_log,
    )


def build_rrl(config: Config, acl: Acl) -> ResponseRateLimit | None:
    """Response rate limiting for clients outside ``server.allow_recursion``, when on."""
    if not config.rrl.enabled:
        return None
    limits = config.rrl
    settings = RrlSettings(
        limits.responses_per_second, limits.slip, limits.ipv4_prefix, limits.ipv6_prefix
    )
    return ResponseRateLimit(settings, exempt=acl.allows)


async def listen(
    config: Config,
    handler: QueryHandler,
    answer_cache: AnswerCache,
    stats: Stats,
    rrl: ResponseRateLimit | None,
    query_log: QueryLog | None,
) -> tuple[list[UdpServer], list[TcpServer]]:
    """A UDP listener thread and a TCP server per ``server.listen`` address, started;
    ``StartupError`` when an address cannot be bound."""
    server = config.server
    udps: list[UdpServer] = []
    tcps: list[TcpServer] = []
    for entry in server.listen:
        host, port = parse_hostport(entry, 53)
        udp_sock, tcp_sock = bind_pair(host, port)
        udp = UdpServer(
            udp_sock, handler, answer_cache, stats, rrl=rrl, query_log=query_log,
            misses_per_client=server.udp_miss_rate_per_client,
            misses_per_prefix=server.udp_miss_rate_per_network,
            misses_total=server.udp_miss_rate_total,
        )  # fmt: skip
        tcp = TcpServer(
            tcp_sock,
            handler,
            stats,
            answer_cache=None if query_log is not None else answer_cache,  # log every answer
            idle_timeout_s=server.tcp_idle_timeout,
            max_connections=server.tcp_max_connections,
            max_per_client=server.tcp_max_connections_per_client,
        )
        udp.start()
        await tcp.start()
        udps.append(udp)
        tcps.append(tcp)
        logger.info(
            "listening on %s (udp+tcp)", format_hostport(*udp.address), extra=event("listening")
        )
    return udps, tcps


def bind_pair(host: str, port: int) -> tuple[socket.socket, socket.socket]:
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


def _prefetcher(forward: ForwardCache) -> Callable[[tuple[str, int, int]], None]:
    """The answer cache's popular-answer hook (a listener thread) -> a prefetch on the loop."""
    loop = asyncio.get_running_loop()

    def hand_over(question: tuple[str, int, int]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: shutting down
            loop.call_soon_threadsafe(forward.prefetch, *question)

    return hand_over
