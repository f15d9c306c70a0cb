"""Whether settings make sense: every key checked by its section's validator, every problem
collected and reported together, each naming the key and where its value was written
(FILE:LINE, the environment variable, the flag: ``Config.origins``); and the warnings for
what is valid but rarely meant.  ``dnsd.config`` reads the settings and calls ``validate``;
this module never reads a file or the environment.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING

from dnsd.admission import name_problem
from dnsd.config_error import ConfigError
from dnsd.hostport import parse_hostport
from dnsd.names import in_zone, normalized
from dnsd.protocol import MAX_TTL
from dnsd.resolve.upstream_health import POLICIES
from dnsd.resolve.upstreams import parse_upstream

if TYPE_CHECKING:
    from dnsd.config_sections import (
        Config,
        DockerConfig,
        EtcdConfig,
        ForwardConfig,
        HttpConfig,
        LogConfig,
        RrlConfig,
        ServerConfig,
    )

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DOCKER_SCHEMES = ("unix", "tcp", "http", "https", "ssh")
MAX_DNS_TTL = MAX_TTL
# Top-level names no registry delegates (RFC 6761, 6762; ICANN's .internal; names in common
# private use): a zone there cannot take a real domain's names.
UNDELEGATED_TLDS = frozenset(
    f"{name}." for name in ("docker", "local", "internal", "test", "localhost", "invalid",
                            "example", "lan", "home", "corp", "intranet", "private")
)  # fmt: skip


class Problems(list[str]):
    """Every configuration error found, reported together (``raise_if_any``)."""

    def raise_if_any(self) -> None:
        if self:
            raise ConfigError("\n".join(self))


class _Checker:
    """Collects every problem, each naming where the key was written (FILE:LINE, the
    environment variable, the flag) and the key."""

    def __init__(self, origin: str, origins: Mapping[tuple[str, str], str]) -> None:
        self.origin = origin  # for a key left at its default
        self.origins = origins
        self.problems: list[str] = []

    def fail(self, key: str, message: str) -> None:
        section, _, name = key.partition(".")
        where = self.origins.get((section, name), self.origin)
        self.problems.append(f"{where}: key '{key}': {message}")

    def at_least(self, key: str, value: float, least: float, message: str) -> None:
        if value < least:
            self.fail(key, message)

    def hostport(self, key: str, entry: str, default_port: int) -> None:
        try:
            parse_hostport(entry, default_port)
        except ValueError as exc:
            self.fail(key, str(exc))

    def upstream(self, key: str, entry: str, context: str = "") -> None:
        try:
            parse_upstream(entry)
        except ValueError as exc:
            self.fail(key, f"{context}{exc}")

    def domain(self, key: str, domain: str) -> str:
        name = normalized(domain)
        if name_problem(name) or "*" in name:
            self.fail(key, f"not a domain name: {domain!r}")
        return name


def validate(config: Config, origin: str, problems: Problems | None = None) -> Config:
    """Every section checked by its own validator (each message names its key and where it
    was written); the config with names normalised.  ``ConfigError`` holds every problem,
    with ``problems`` (found before) first."""
    check = _Checker(origin, config.origins)
    _check_server(config.server, check)
    domains, allowed = _check_forward(config.forward, config.server.zones, check)
    _check_rrl(config.rrl, check)
    _check_http(config.http, check)
    _check_log(config.log, check)
    check.at_least("static.max_hosts_bytes", config.static.max_hosts_bytes, 1, "must be positive")
    _check_etcd(config.etcd, check)
    zones = [normalized(z) for z in config.server.zones]
    docker_zone = _check_docker(config.docker, zones, check)
    found = Problems(problems or [])
    found.extend(check.problems)
    found.raise_if_any()
    etcd = config.etcd
    node_id = etcd.node_id or socket.gethostname()
    advertise = "host" if etcd.advertise_ip else etcd.advertise
    return dataclasses.replace(
        config,
        server=dataclasses.replace(config.server, zones=zones),
        forward=dataclasses.replace(config.forward, domains=domains, rebind_allowed=allowed),
        docker=dataclasses.replace(config.docker, zone=docker_zone),
        etcd=dataclasses.replace(etcd, node_id=node_id, advertise=advertise),
    )


def _check_ttl(check: _Checker, key: str, ttl: int) -> None:
    if not 0 <= ttl <= MAX_DNS_TTL:  # RFC 2181 8: a TTL is 0 .. 2^31 - 1 seconds
        check.fail(key, f"must be between 0 and {MAX_DNS_TTL} seconds (a DNS TTL), got {ttl}")


def _check_server(server: ServerConfig, check: _Checker) -> None:
    if not server.listen:
        check.fail("server.listen", "at least one address is needed")
    for entry in server.listen:
        check.hostport("server.listen", entry, 53)
    for network in server.allow_recursion:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            check.fail("server.allow_recursion", f"not a network: {network!r}")
    if not server.zones:
        check.fail("server.zones", "at least one zone is needed")
    for zone in server.zones:
        absolute = normalized(zone)
        if absolute != "." and (not zone.strip() or name_problem(absolute) is not None):
            check.fail("server.zones", f"not a domain name: {zone!r}")
    _check_ttl(check, "server.ttl", server.ttl)
    _check_ttl(check, "server.negative_ttl", server.negative_ttl)
    for key in (
        "tcp_max_connections", "tcp_max_connections_per_client", "answer_cache_size",
        "answer_cache_bytes",
    ):  # fmt: skip
        check.at_least(f"server.{key}", getattr(server, key), 1, "must be positive")
    for key in ("udp_miss_rate_per_client", "udp_miss_rate_per_network", "udp_miss_rate_total"):
        check.at_least(f"server.{key}", getattr(server, key), 0, "must be 0 (no limit) or positive")
    if not server.tcp_idle_timeout > 0:
        check.fail("server.tcp_idle_timeout", "must be positive")
    if not 512 <= server.max_udp_size <= 65535:
        check.fail("server.max_udp_size", "must be between 512 and 65535")


def _check_forward(
    forward: ForwardConfig, zones: list[str], check: _Checker
) -> tuple[dict[str, list[str]], list[str]]:
    """The per-domain upstreams and the rebinding exceptions, names normalised."""
    for entry in forward.upstreams:
        check.upstream("forward.upstreams", entry)
    domains: dict[str, list[str]] = {}
    for domain, entries in forward.domains.items():
        name = check.domain("forward.domains", domain)
        if name == ".":
            check.fail("forward.domains", f"not a domain name: {domain!r}")
        if any(in_zone(name, normalized(zone)) for zone in zones):
            check.fail("forward.domains", f"{domain!r} is inside a zone dnsd answers itself")
        if not entries:
            check.fail("forward.domains", f"{domain!r}: at least one upstream is needed")
        for entry in entries:
            check.upstream("forward.domains", entry, f"{domain!r}: ")
        domains[name] = entries
    allowed = [check.domain("forward.rebind_allowed", d) for d in forward.rebind_allowed]
    _check_ttl(check, "forward.max_ttl", forward.max_ttl)
    _check_ttl(check, "forward.max_negative_ttl", forward.max_negative_ttl)
    _check_ttl(check, "forward.stale_for", forward.stale_for)
    if not forward.timeout > 0:
        check.fail("forward.timeout", "must be positive")
    if not 0 <= forward.failure_ttl <= 300:
        check.fail("forward.failure_ttl", "seconds from 0 (off) to 300 (RFC 9520's limit)")
    if not forward.health_check > 0:
        check.fail("forward.health_check", "must be positive (seconds between probes)")
    check.at_least("forward.max_fails", forward.max_fails, 0, "must be 0 (never down) or more")
    if forward.policy not in POLICIES:
        check.fail("forward.policy", f"one of {', '.join(POLICIES)}, got {forward.policy!r}")
    for key in ("cache_size", "cache_bytes", "max_cached_answer"):
        check.at_least(f"forward.{key}", getattr(forward, key), 1, "must be positive")
    for key in ("max_pending", "max_pending_per_client"):
        check.at_least(
            f"forward.{key}", getattr(forward, key), 0, "must be 0 (automatic) or positive"
        )
    return domains, allowed


def _check_rrl(rrl: RrlConfig, check: _Checker) -> None:
    check.at_least("rrl.responses_per_second", rrl.responses_per_second, 1, "must be positive")
    check.at_least("rrl.slip", rrl.slip, 0, "must be 0 (drop every limited answer) or more")
    if not 0 <= rrl.ipv4_prefix <= 32:
        check.fail("rrl.ipv4_prefix", "must be between 0 and 32")
    if not 0 <= rrl.ipv6_prefix <= 128:
        check.fail("rrl.ipv6_prefix", "must be between 0 and 128")


def _check_http(http: HttpConfig, check: _Checker) -> None:
    if not http.request_timeout > 0:
        check.fail("http.request_timeout", "must be positive")
    if http.listen:
        check.hostport("http.listen", http.listen, 0)


def _check_log(log: LogConfig, check: _Checker) -> None:
    if log.format not in LOG_FORMATS:
        check.fail("log.format", f"must be one of {', '.join(LOG_FORMATS)}")
    check.at_least("log.queries_per_second", log.queries_per_second, 1, "must be positive")
    if log.level.upper() not in LOG_LEVELS:
        check.fail("log.level", f"must be one of {', '.join(LOG_LEVELS)}")


def _check_etcd(etcd: EtcdConfig, check: _Checker) -> None:
    if not 2 <= etcd.lease_ttl <= MAX_DNS_TTL:
        check.fail("etcd.lease_ttl", f"must be between 2 and {MAX_DNS_TTL} seconds")
    if etcd.advertise not in ("container", "host"):
        check.fail("etcd.advertise", "must be 'container' or 'host'")
    if etcd.advertise == "host" or etcd.advertise_ip:
        try:
            ipaddress.ip_address(etcd.advertise_ip)
        except ValueError:
            check.fail(
                "etcd.advertise_ip", f"advertise 'host' needs an IP address: {etcd.advertise_ip!r}"
            )
    if etcd.user and not etcd.ca:
        check.fail("etcd.user", "a user and password are only sent over TLS: set etcd.ca too")
    if not etcd.prefix.startswith("/"):
        check.fail("etcd.prefix", "must start with '/'")
    for endpoint in etcd.endpoints:
        host_port = endpoint.split("://", 1)[-1]
        if ":" not in host_port or not host_port.rsplit(":", 1)[1].rstrip("/").isdigit():
            check.fail("etcd.endpoints", f"not HOST:PORT: {endpoint!r}")


def _check_docker(docker: DockerConfig, zones: list[str], check: _Checker) -> str:
    """The zone Docker names go in, normalised."""
    if docker.url:
        scheme, _, rest = docker.url.partition("://")
        if scheme not in DOCKER_SCHEMES or not rest.strip("/") or " " in docker.url:
            check.fail("docker.url", f"not a Docker Engine URL (unix:///path or tcp://host:port): "
                       f"{docker.url!r}")  # fmt: skip
    if not docker.resync_interval > 0:
        check.fail("docker.resync_interval", "must be positive")
    docker_zone = normalized(docker.zone) if docker.zone else (zones or ["."])[0]
    if docker_zone not in zones:
        check.fail("docker.zone", f"{docker_zone!r} is not one of server.zones")
    return docker_zone


def warnings(config: Config) -> list[str]:
    """What a validated configuration allows that is rarely meant: each line names the key.
    ``check-config`` prints them and ``serve`` logs them at start."""
    found = []
    broad = [
        zone
        for zone in config.server.zones
        if zone.count(".") <= 1 and zone not in UNDELEGATED_TLDS
    ]
    if broad and config.etcd.enabled:
        found.append(
            f"key 'server.zones': {', '.join(broad)} is the root or a top-level domain and "
            "etcd is on: any etcd writer may publish any name under it "
            "(for example a bank's or a registry's), answered with authority"
        )
    elif broad := [zone for zone in broad if zone != "."]:  # the root: a deliberate island
        found.append(
            f"key 'server.zones': {', '.join(broad)} is a top-level domain: dnsd "
            "answers every name under it itself (NXDOMAIN for names it does not hold), and "
            "never forwards them"
        )
    if config.forward.enabled:
        everyone = [
            network
            for network in config.server.allow_recursion
            if ipaddress.ip_network(network, strict=False).prefixlen == 0
        ]
        if everyone:
            found.append(
                f"key 'server.allow_recursion': {', '.join(everyone)} lets every address on "
                "the Internet use dnsd as a resolver (an open resolver: a tool for "
                "amplification attacks); list the networks of your clients instead"
            )
    return found
