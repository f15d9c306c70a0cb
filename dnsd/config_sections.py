"""Every setting dnsd has, as frozen dataclasses, one per config file section, with its
default (a default that code also needs is written once, beside that code, and referred to
here).  ``dnsd.config`` reads them from the file, the environment and the flags;
``dnsd.config_check`` checks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dnsd.resolve.acl import DEFAULT_ALLOW_RECURSION
from dnsd.resolve.cache import (
    CACHE_BYTES,
    CACHE_ENTRIES,
    MAX_ANSWER_BYTES,
    MAX_NEGATIVE_TTL_S,
    MAX_TTL_S,
    STALE_FOR_S,
)
from dnsd.resolve.forward import FAILURE_TTL_S, UPSTREAM_TIMEOUT_S
from dnsd.resolve.upstream_health import MAX_FAILS, PROBE_INTERVAL_S
from dnsd.sources.docker_engine import RESYNC_INTERVAL_S
from dnsd.sources.etcd_client import EtcdConnection
from dnsd.wire.answer_cache import ANSWER_CACHE_BYTES, ANSWER_CACHE_ENTRIES
from dnsd.wire.codec import DEFAULT_MAX_UDP_SIZE
from dnsd.wire.miss_rate import (
    MISSES_PER_CLIENT_PER_SECOND,
    MISSES_PER_PREFIX_PER_SECOND,
    MISSES_PER_SECOND,
)
from dnsd.wire.query_log import DEFAULT_LINES_PER_SECOND
from dnsd.wire.tcp import IDLE_TIMEOUT_S, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT

DEFAULT_LISTEN = "127.0.0.1:5300"

# Defaults that code also needs live with that code (the cache sizes in resolve.cache, the
# TCP limits in wire.tcp, ...): each is written once, and these sections refer to it.


@dataclass(frozen=True)
class ServerConfig:
    listen: list[str] = field(default_factory=lambda: [DEFAULT_LISTEN])
    zones: list[str] = field(default_factory=lambda: ["docker."])
    ttl: int = 5
    negative_ttl: int = 5
    max_udp_size: int = DEFAULT_MAX_UDP_SIZE
    allow_recursion: list[str] = field(default_factory=lambda: list(DEFAULT_ALLOW_RECURSION))
    tcp_idle_timeout: float = IDLE_TIMEOUT_S
    tcp_max_connections: int = MAX_CONNECTIONS
    tcp_max_connections_per_client: int = MAX_CONNECTIONS_PER_CLIENT
    udp_miss_rate_per_client: int = MISSES_PER_CLIENT_PER_SECOND  # 0: no limit
    # ... from one /24 (IPv4) or /56 (IPv6), and from everyone (past it, the heaviest
    # networks are shed first); over a limit: TC=1 (ask over TCP); 0: no limit
    udp_miss_rate_per_network: int = MISSES_PER_PREFIX_PER_SECOND
    udp_miss_rate_total: int = MISSES_PER_SECOND
    answer_cache_size: int = ANSWER_CACHE_ENTRIES
    answer_cache_bytes: int = ANSWER_CACHE_BYTES


@dataclass(frozen=True)
class ForwardConfig:
    enabled: bool = True
    upstreams: list[str] = field(default_factory=list)  # empty: nameservers in resolv_conf
    resolv_conf: str = "/etc/resolv.conf"
    timeout: float = UPSTREAM_TIMEOUT_S
    cache_size: int = CACHE_ENTRIES
    cache_bytes: int = CACHE_BYTES  # estimated memory of the cached answers
    max_cached_answer: int = MAX_ANSWER_BYTES  # larger replies (bytes) are passed on, not kept
    # domain -> its own upstreams ("corp.example." = ["10.0.0.53", "tls://10.0.0.54#ns.corp"])
    domains: dict[str, list[str]] = field(default_factory=dict)
    tls_ca: str = ""  # CA bundle for tls:// upstreams; empty: the system's
    max_ttl: int = MAX_TTL_S
    max_negative_ttl: int = MAX_NEGATIVE_TTL_S
    # Seconds past its TTL an answer may be served (TTL 30) while no upstream answers
    # (RFC 8767 serve-stale); 0: off.
    stale_for: int = STALE_FOR_S
    # Questions waiting on upstreams at once (0: 2048, capped by the open-file limit), and
    # how many of them one client may hold (0: a quarter of that).
    max_pending: int = 0
    max_pending_per_client: int = 0
    # DNS rebinding protection: refuse forwarded answers holding private, loopback or
    # link-local addresses, except for names under rebind_allowed (and forward.domains).
    stop_rebind: bool = False
    rebind_allowed: list[str] = field(default_factory=list)
    # An upstream failing this many times in a row is down (skipped, probed with ". NS"
    # every health_check seconds until it answers); 0: never down.
    max_fails: int = MAX_FAILS
    health_check: float = PROBE_INTERVAL_S
    policy: str = "sequential"  # or "random", "round_robin": the order of healthy upstreams
    # A name that failed at every upstream asked (SERVFAIL, REFUSED, timeout) gets SERVFAIL
    # at once for this many seconds (RFC 9520); 0: asked again every time.
    failure_ttl: float = FAILURE_TTL_S


@dataclass(frozen=True)
class StaticConfig:
    hosts: list[str] = field(default_factory=list)
    watch_interval: float = 1.0
    records: list[dict[str, Any]] = field(default_factory=list)
    # Names outside server.zones (answered with AA to every client): only when set on purpose.
    outside_zones: bool = False
    # A larger hosts file is not read (the last good records stay): 16 MiB is ~350,000 lines.
    max_hosts_bytes: int = 16 * 2**20


@dataclass(frozen=True)
class DockerConfig:
    enabled: bool = True
    url: str = ""  # empty: DOCKER_HOST, else unix:///var/run/docker.sock
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    zone: str = ""  # empty: the first of server.zones
    resync_interval: float = RESYNC_INTERVAL_S
    serve_starting: bool = True  # serve containers whose healthcheck is still "starting"
    image_names: bool = False  # also answer <name>.<image>.<zone> (dnsdock style)


@dataclass(frozen=True)
class EtcdConfig:
    enabled: bool = False
    endpoints: list[str] = field(default_factory=lambda: ["127.0.0.1:2379"])
    prefix: str = "/skydns"
    ca: str = ""
    cert: str = ""
    key: str = ""
    user: str = ""
    password: str = ""
    node_id: str = ""  # empty: the host name
    lease_ttl: int = 10
    publish: bool = True  # write this node's containers (needs Docker on)
    advertise: str = "container"  # "container": container addresses; "host": advertise_ip
    advertise_ip: str = ""

    def connection(self) -> EtcdConnection:
        return EtcdConnection(
            self.endpoints, self.ca, self.cert, self.key, self.user, self.password
        )


@dataclass(frozen=True)
class RrlConfig:
    """Response rate limiting for UDP clients outside server.allow_recursion."""

    enabled: bool = False
    responses_per_second: int = 20
    slip: int = 2  # every slip-th limited answer is sent truncated (TC=1); 0 = drop all
    ipv4_prefix: int = 24
    ipv6_prefix: int = 56


@dataclass(frozen=True)
class HttpConfig:
    listen: str = ""  # "ADDR:PORT" serves /health /ready /metrics /records; empty: off
    request_timeout: float = 10.0  # seconds one connection may take, headers to answer


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"
    level: str = "INFO"
    queries: bool = False  # one line per query (client, name, type, rcode, source, µs)
    queries_per_second: int = DEFAULT_LINES_PER_SECOND  # query log lines; the rest counted


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    static: StaticConfig = field(default_factory=StaticConfig)
    docker: DockerConfig = field(default_factory=DockerConfig)
    etcd: EtcdConfig = field(default_factory=EtcdConfig)
    rrl: RrlConfig = field(default_factory=RrlConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    log: LogConfig = field(default_factory=LogConfig)
    path: str | None = None  # the file it was read from, if any
    # (section, key) -> where its value came from ("conf/dnsd.toml:12", "environment variable
    # DNSD_LISTEN", "flag --listen"); keys left at their default are not in it.
    origins: dict[tuple[str, str], str] = field(default_factory=dict, compare=False)


SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "forward": ForwardConfig,
    "static": StaticConfig,
    "docker": DockerConfig,
    "etcd": EtcdConfig,
    "rrl": RrlConfig,
    "http": HttpConfig,
    "log": LogConfig,
}
