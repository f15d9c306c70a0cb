"""Configuration: frozen dataclasses filled from defaults < TOML file < DNSD_* environment < flags.

Every key of every section can be set in the file (``[server] listen = [...]``) and in the
environment as ``DNSD_<SECTION>_<KEY>`` (lists comma-separated); the common ones also have short
names shared with the command-line flags (``DNSD_LISTEN`` = ``--listen``).  An unknown key, an
unknown ``DNSD_*`` variable or a bad value raises ``ConfigError`` naming the key and its origin.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import logging
import re
import socket
import tomllib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dnsd.admission import name_problem
from dnsd.config_error import ConfigError as ConfigError
from dnsd.hostport import parse_hostport
from dnsd.names import in_zone, normalized
from dnsd.protocol import MAX_TTL
from dnsd.resolve.acl import DEFAULT_ALLOW_RECURSION
from dnsd.resolve.cache import (
    CACHE_BYTES,
    CACHE_ENTRIES,
    MAX_ANSWER_BYTES,
    MAX_NEGATIVE_TTL_S,
    MAX_TTL_S,
    STALE_FOR_S,
)
from dnsd.resolve.forward import FAILURE_TTL_S, UPSTREAM_TIMEOUT_S, parse_upstream
from dnsd.resolve.upstream_health import MAX_FAILS, POLICIES, PROBE_INTERVAL_S
from dnsd.sources.docker import RESYNC_INTERVAL_S
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

logger = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:5300"
ENV_PREFIX = "DNSD_"
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


@dataclass(frozen=True)
class Flag:
    """One command-line flag, declared once: ``dnsd serve --help``, the environment's short
    name (``DNSD_<NAME>``) and the table in docs/configuration.md are all made from it."""

    name: str  # "docker_url" -> --docker-url, DNSD_DOCKER_URL
    section: str
    key: str
    help: str
    metavar: str | None = None
    repeat: bool = False  # may be given more than once (a list; comma-separated in the env)
    switch: bool | None = None  # a flag without a value: sets the key to this
    choices: tuple[str, ...] | None = None
    default: str = ""  # the default, as the docs and --help say it
    also: str = ""  # docs: what else the flag turns on

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        value = "=1" if self.switch is not None else ""
        return f"{ENV_PREFIX}{self.name.upper()}{value}"


FLAGS: tuple[Flag, ...] = (
    Flag("listen", "server", "listen", "address to serve UDP and TCP on", "ADDR:PORT",
         repeat=True, default="127.0.0.1:5300"),
    Flag("zone", "server", "zones", "zone dnsd owns", "NAME", repeat=True, default="docker."),
    Flag("hosts", "static", "hosts", "hosts file 'IP name...'", "FILE", repeat=True,
         default="none"),
    Flag("upstream", "forward", "upstreams",
         "upstream resolver, or tls://ADDR[:PORT][#name] for DNS over TLS", "ADDR[:PORT]",
         repeat=True, default="nameservers in /etc/resolv.conf"),
    Flag("no_forward", "forward", "enabled", "answer only the zones; REFUSED for other names",
         switch=False, default="forwarding on"),
    Flag("docker_url", "docker", "url", "Docker Engine API", "URL",
         default="DOCKER_HOST, else unix:///var/run/docker.sock"),
    Flag("no_docker", "docker", "enabled", "do not watch Docker", switch=False,
         default="Docker on"),
    Flag("log_queries", "log", "queries",
         "log one line per query: client, name, type, rcode, source, microseconds",
         switch=True, default="off"),
    Flag("etcd", "etcd", "endpoints",
         "share containers through etcd: comma-separated HOST:PORT list (turns etcd on)",
         "ENDPOINTS", default="etcd off", also="etcd.enabled"),
    Flag("node_id", "etcd", "node_id", "this host's name in etcd keys", "NODE_ID",
         default="the host name"),
    Flag("advertise_ip", "etcd", "advertise_ip",
         "publish this host address with published host ports", "IP",
         default="container addresses", also='advertise = "host"'),
    Flag("http", "http", "listen",
         "serve /health /ready /metrics /records here (/records shows the whole name table: "
         "keep it on loopback)", "ADDR:PORT", default="off"),
    Flag("log_format", "log", "format", "log line format", choices=("text", "json"),
         default="text"),
    Flag("log_level", "log", "level", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
         default="INFO"),
)  # fmt: skip

# Short names shared by flags and the environment: name -> (section, key).
SHORT_NAMES: dict[str, tuple[str, str]] = {
    f.name: (f.section, f.key) for f in FLAGS if f.switch is None
}
# Switches and their DNSD_<NAME> variables: DNSD_NO_FORWARD=1 -> forward.enabled = false.
SWITCHES: dict[str, Flag] = {
    f"{ENV_PREFIX}{f.name.upper()}": f for f in FLAGS if f.switch is not None
}


def flag_table() -> str:
    """The flags table of docs/configuration.md (a test keeps the document equal to it)."""
    rows = ["| flag | environment | key | default |", "|---|---|---|---|"]
    for flag in FLAGS:
        shown = f"`{flag.option}`"
        if flag.metavar:
            shown = f"`{flag.option} {flag.metavar}`"
        elif flag.choices:
            shown = f"`{flag.option} {'|'.join(flag.choices)}`".replace("|", "\\|")
        if flag.repeat:
            shown += " (repeatable)"
        env = f"`{flag.env}`" + (" (comma-separated)" if flag.repeat else "")
        key = f"`{flag.section}.{flag.key}`"
        if flag.switch is not None:
            key = f"`{flag.section}.{flag.key} = {str(flag.switch).lower()}`"
        if flag.also:
            key += f" (+ `{flag.also}`)"
        rows.append(f"| {shown} | {env} | {key} | {flag.default} |")
    return "\n".join(rows) + "\n"


Overrides = dict[tuple[str, str], Any]


class Layer(dict[tuple[str, str], Any]):
    """One source of settings (the file, the environment, the flags): (section, key) ->
    value, and for each key where it was written (``origins``), so an error names it."""

    def __init__(self) -> None:
        super().__init__()
        self.origins: dict[tuple[str, str], str] = {}

    def set(self, target: tuple[str, str], value: Any, origin: str) -> None:
        self[target] = value
        self.origins[target] = origin


class Problems(list[str]):
    """Every configuration error found, reported together (``raise_if_any``)."""

    def raise_if_any(self) -> None:
        if self:
            raise ConfigError("\n".join(self))


def _field_types(section: str) -> dict[str, Any]:
    hints = typing.get_type_hints(SECTIONS[section])
    return {f.name: hints[f.name] for f in dataclasses.fields(SECTIONS[section])}


def _coerce(value: Any, kind: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        if isinstance(value, str) and typing.get_origin(item) is not dict:
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, where) for v in value]
    if origin is dict:
        if isinstance(value, str):  # environment: "corp.example.=10.0.0.53,10.0.0.54;lab.=..."
            pairs = [part.partition("=") for part in value.split(";") if part.strip()]
            if not all(sep for _, sep, _ in pairs):
                raise ConfigError(f"{where}: expected KEY=VALUE;..., got {value!r}")
            value = {key.strip(): rest for key, _, rest in pairs}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        _, item = typing.get_args(kind) or (str, Any)
        if item is Any:
            return value
        return {str(k): _coerce(v, item, f"{where}.{k}") for k, v in value.items()}
    if kind is bool:
        if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
            return value.strip().lower() in TRUE_WORDS
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, str):
            value = _parse_number(value, int, where)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, str):
            value = _parse_number(value, float, where)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def _parse_number(text: str, kind: type, where: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{where}: expected a number, got {text!r}") from None


def read_file(path: str, problems: Problems | None = None) -> Layer:
    """The file's settings, each with its FILE:LINE; a problem with one key is added to
    ``problems`` (raised at once without it) and the rest are still read."""
    found = Problems() if problems is None else problems
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
        document = tomllib.loads(raw.decode())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    lines = _key_lines(raw.decode())
    layer = Layer()
    for section, table in document.items():
        if section not in SECTIONS:
            found.append(f"{path}: unknown section [{section}]{_did_you_mean(section, SECTIONS)}")
            continue
        if not isinstance(table, dict):
            found.append(f"{path}: [{section}] must be a table")
            continue
        types = _field_types(section)
        for key, value in table.items():
            where = f"{path}:{lines.get((section, key), lines.get((section, ''), 0))}"
            if key not in types:
                hint = _did_you_mean(key, types)
                found.append(f"{where}: unknown key '{section}.{key}'{hint}")
                continue
            try:
                layer.set((section, key), _coerce(value, types[key], f"{where}: key "
                          f"'{section}.{key}'"), where)  # fmt: skip
            except ConfigError as exc:
                found.append(str(exc))
    if problems is None:
        found.raise_if_any()
    return _relative_to(path, layer)


_TABLE = re.compile(r"\s*\[\[?\s*([A-Za-z0-9_-]+)")
_KEY = re.compile(r"\s*([A-Za-z0-9_-]+)\s*=")


def _key_lines(text: str) -> dict[tuple[str, str], int]:
    """(section, key) -> the line it is first written on ((section, ""): the section's)."""
    lines: dict[tuple[str, str], int] = {}
    section = ""
    for number, line in enumerate(text.splitlines(), 1):
        table = _TABLE.match(line)
        if table:
            section = table.group(1)
            lines.setdefault((section, ""), number)
            continue
        key = _KEY.match(line)
        if key and section:
            lines.setdefault((section, key.group(1)), number)
    return lines


def _did_you_mean(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _relative_to(path: str, layer: Layer) -> Layer:
    """Hosts files named in a config file are relative to that file's folder."""
    base = Path(path).resolve().parent
    hosts = layer.get(("static", "hosts"))
    if hosts:
        layer[("static", "hosts")] = [str(base / h) for h in hosts]
    return layer


def read_environment(environ: Mapping[str, str], problems: Problems | None = None) -> Layer:
    """The ``DNSD_*`` variables' settings, each with its variable's name; problems as in
    ``read_file``."""
    found = Problems() if problems is None else problems
    long_names = {
        f"{ENV_PREFIX}{section}_{key}".upper(): (section, key)
        for section in SECTIONS
        for key in _field_types(section)
    }
    short = {f"{ENV_PREFIX}{name}".upper(): target for name, target in SHORT_NAMES.items()}
    layer = Layer()
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ("DNSD_CONFIG", *SWITCHES):
            continue
        target = short.get(name) or long_names.get(name)
        where = f"environment variable {name}"
        if target is None:
            hint = _did_you_mean(name, [*short, *long_names, "DNSD_CONFIG", *SWITCHES])
            found.append(f"environment: unknown variable {name}{hint}")
            continue
        section, key = target
        kind = _field_types(section)[key]
        try:
            layer.set(target, _coerce(value, kind, where), where)
        except ConfigError as exc:
            found.append(str(exc))
    if environ.get("DNSD_ETCD"):
        layer.set(("etcd", "enabled"), True, "environment variable DNSD_ETCD")
    for name, flag in SWITCHES.items():
        if name not in environ:
            continue
        try:
            on = _coerce(environ[name], bool, f"environment variable {name}")
        except ConfigError as exc:
            found.append(str(exc))
            continue
        if on:
            layer.set((flag.section, flag.key), flag.switch, f"environment variable {name}")
    if problems is None:
        found.raise_if_any()
    return layer


def build(*layers: Overrides, path: str | None = None, problems: Problems | None = None) -> Config:
    """Apply override layers (later wins) to the defaults and validate the result; every
    problem (``problems``: found while reading the layers) raised together."""
    merged: Overrides = {}
    origins: dict[tuple[str, str], str] = {}
    for layer in layers:
        merged.update(layer)
        for target in layer:
            origin = getattr(layer, "origins", {}).get(target)
            if origin:
                origins[target] = origin
            else:
                origins.pop(target, None)
    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        values = {key: v for (sec, key), v in merged.items() if sec == section}
        sections[section] = cls(**values)
    config = Config(**sections, path=path, origins=origins)
    return validate(config, path or "flags/environment", problems)


def load(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Overrides | None = None,
) -> Config:
    """The settings from the file, the environment and the flags (later wins), validated;
    ``ConfigError`` names every problem, each with where it was written."""
    problems = Problems()
    file_layer = read_file(path, problems) if path else Layer()
    env_layer = read_environment(environ or {}, problems)
    return build(file_layer, env_layer, flags or {}, path=path, problems=problems)


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


SECRET_KEYS = frozenset({("etcd", "password")})


def settings_text(config: Config) -> str:
    """Every setting in effect, as TOML (``check-config --print``, as ``unbound-checkconf
    -o`` shows them): each key that was not left at its default says where it came from;
    secrets are not shown."""
    lines: list[str] = []
    for section in SECTIONS:
        lines.append(f"[{section}]")
        values = getattr(config, section)
        for item in dataclasses.fields(values):
            value = getattr(values, item.name)
            if (section, item.name) in SECRET_KEYS and value:
                value = "(set, not shown)"
            origin = config.origins.get((section, item.name))
            comment = f"  # {origin}" if origin else ""
            lines.append(f"{item.name} = {_toml_value(value)}{comment}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: the same escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{" + (f" {pairs} " if pairs else "") + "}"
    return json.dumps(str(value))
