"""Configuration: frozen dataclasses filled from defaults < TOML file < DNSD_* environment < flags.

Every key of every section can be set in the file (``[server] listen = [...]``) and in the
environment as ``DNSD_<SECTION>_<KEY>`` (lists comma-separated); the common ones also have short
names shared with the command-line flags (``DNSD_LISTEN`` = ``--listen``).  An unknown key, an
unknown ``DNSD_*`` variable or a bad value raises ``ConfigError`` naming the key and its origin.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import re
import tomllib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dnsd.config_check import Problems, validate
from dnsd.config_check import warnings as warnings
from dnsd.config_error import ConfigError as ConfigError
from dnsd.config_sections import (
    SECTIONS as SECTIONS,
)
from dnsd.config_sections import (
    Config as Config,
)
from dnsd.config_sections import (
    DockerConfig as DockerConfig,
)
from dnsd.config_sections import (
    EtcdConfig as EtcdConfig,
)
from dnsd.config_sections import (
    ForwardConfig as ForwardConfig,
)
from dnsd.config_sections import (
    HttpConfig as HttpConfig,
)
from dnsd.config_sections import (
    LogConfig as LogConfig,
)
from dnsd.config_sections import (
    RrlConfig as RrlConfig,
)
from dnsd.config_sections import (
    ServerConfig as ServerConfig,
)
from dnsd.config_sections import (
    StaticConfig as StaticConfig,
)

logger = logging.getLogger(__name__)

ENV_PREFIX = "DNSD_"


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
            text = handle.read().decode()
        document = tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    lines = _key_lines(text)
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
