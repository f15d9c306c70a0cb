"""Command line: ``dnsd serve``, ``check-config``, ``records``, ``query``, ``register``,
``deregister``, ``version``.

The only place that turns exceptions into exit codes: 0 ok, 2 bad configuration or a listen
address that cannot be bound, 1 anything unexpected.  Every serve flag is also a ``DNSD_*``
environment variable (see dnsd.config); flags win over the environment, which wins over the file.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from dnsd import __version__, logs, register, tools
from dnsd.config import FLAGS, Config, ConfigError, Layer, load, settings_text
from dnsd.config import warnings as config_warnings
from dnsd.daemon import SHUTDOWN_DEADLINE_S, Daemon, StartupError
from dnsd.hostport import format_hostport, parse_hostport
from dnsd.records import RecordStore
from dnsd.shutdown import ShutdownGuard, stop_soon
from dnsd.source_setup import static_settings
from dnsd.sources.errors import explain
from dnsd.sources.static import StaticSource

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
DEFAULT_HTTP = "127.0.0.1:9153"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnsd", description="DNS service discovery for containers."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the DNS server",
        description="Run the DNS server. Every flag can also be set as DNSD_<FLAG> "
        "(e.g. DNSD_LISTEN=127.0.0.1:5300,[::1]:5300); flags win over the environment, "
        "which wins over the config file.",
    )
    _add_settings(serve)

    check = commands.add_parser(
        "check-config",
        help="validate the settings serve would run with and exit",
        description="Check the settings `serve` would run with: the file (FILE, --config or "
        "DNSD_CONFIG), the DNSD_* environment and these flags, plus every static record and "
        "hosts-file line.",
    )
    check.add_argument("file", nargs="?", help="TOML config file (same as --config)")
    check.add_argument(
        "--print", action="store_true",
        help="print every setting in effect, as TOML, each with where it came from",
    )  # fmt: skip
    _add_settings(check)

    records = commands.add_parser(
        "records", help="print the name table of a running dnsd (needs its --http endpoint)"
    )
    records.add_argument(
        "--http",
        metavar="ADDR:PORT",
        help="the daemon's HTTP endpoint (default: http.listen of the settings serve reads, "
        f"else {DEFAULT_HTTP})",
    )
    records.add_argument("--config", help="TOML config file (env DNSD_CONFIG)")
    records.add_argument("--name", default="", metavar="PATTERN", help="glob, e.g. 'web*'")
    records.add_argument(
        "--source", default="", choices=["static", "docker", "etcd"], metavar="SOURCE",
        help="static, docker or etcd",
    )  # fmt: skip
    records.add_argument("--json", action="store_true", help="print JSON instead of a table")
    records.add_argument(
        "--nodes", action="store_true",
        help="list the nodes publishing to etcd (keys, lease time left) instead of records",
    )  # fmt: skip

    ask = commands.add_parser("query", help="ask a DNS server one question (a small dig)")
    ask.add_argument("name")
    ask.add_argument("type", nargs="?", default="A")
    ask.add_argument(
        "--server", metavar="ADDR:PORT",
        help="default: the first server.listen address of the settings serve reads",
    )  # fmt: skip
    ask.add_argument("--config", help="TOML config file (env DNSD_CONFIG)")
    ask.add_argument("--tcp", action="store_true")
    ask.add_argument("--timeout", type=float, default=2.0)

    reg = commands.add_parser(
        "register",
        help="publish a name (a VM, a host's database, ...) to etcd until stopped",
        description="Publish NAME -> ADDR (and with --port an SRV record) to etcd in the form "
        "dnsd publishes containers in, under a lease of its own kept alive until this command "
        "ends (SIGTERM/Ctrl-C withdraws at once; if it dies, within etcd.lease_ttl). A "
        "relative NAME is in the first zone. Reads --config/DNSD_* like serve.",
    )
    reg.add_argument("name", help="e.g. db (db.<first zone>) or db.prod.docker.")
    reg.add_argument("address", metavar="ADDR", help="IPv4 or IPv6 address")
    reg.add_argument("--port", type=int, default=0, help="also an SRV record with this port")
    reg.add_argument(
        "--service", default="",
        help="SRV service name (_SERVICE._PROTO.NAME; default: the port's well-known name)",
    )  # fmt: skip
    reg.add_argument("--proto", choices=["tcp", "udp"], default="tcp", help="default tcp")
    reg.add_argument("--ttl", type=int, help="record TTL (default: server.ttl)")
    reg.add_argument(
        "--txt", action="append", default=[], metavar="KEY=VALUE",
        help="a DNS-SD TXT string for the SRV record (repeatable; needs --port), as a "
        "container's dnsd.txt.KEY labels",
    )  # fmt: skip
    reg.add_argument(
        "--wildcard", action="store_true",
        help="NAME has a '*' label on purpose (it answers every name below that does not "
        "exist); refused without this",
    )  # fmt: skip
    _add_etcd_settings(reg)

    dereg = commands.add_parser(
        "deregister",
        help="withdraw names published with register",
        description="Revoke and delete the registrations of NAME (of ADDR only, if given) "
        "from any node; a running `dnsd register` for them ends.",
    )
    dereg.add_argument("name")
    dereg.add_argument("address", metavar="ADDR", nargs="?")
    _add_etcd_settings(dereg)

    commands.add_parser("version", help="print the version")
    return parser


def _add_etcd_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (env DNSD_CONFIG)")
    for flag in FLAGS:
        if flag.name in ("etcd", "node_id"):
            parser.add_argument(flag.option, metavar=flag.metavar, dest=flag.name, help=flag.help)


def _add_settings(parser: argparse.ArgumentParser) -> None:
    """--config and every settings flag (``FLAGS``), as serve takes them."""
    parser.add_argument("--config", help="TOML config file (env DNSD_CONFIG)")
    for flag in FLAGS:
        default = f" (default: {flag.default})" if flag.default else ""
        repeat = "; repeatable" if flag.repeat else ""
        options: dict[str, Any] = {"help": f"{flag.help}{repeat}{default}", "dest": flag.name}
        if flag.switch is not None:
            options.update(action="store_true", default=None)
        else:
            options.update(metavar=flag.metavar, choices=flag.choices)
            if flag.repeat:
                options["action"] = "append"
            if flag.name == "log_level":
                options["type"] = str.upper
        parser.add_argument(flag.option, **options)


def _settings(args: argparse.Namespace) -> Config:
    """What serve would run with: the file, the environment, and flags (where the command
    takes them); raises ConfigError."""
    path = getattr(args, "file", None) or args.config or os.environ.get("DNSD_CONFIG")
    return load(path, os.environ, _flag_overrides(args))


def _loopback(entry: str) -> str:
    """A listen address as a client reaches it: a wildcard address means loopback."""
    host, port = parse_hostport(entry, 53)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return format_hostport(host, port)


def _flag_overrides(args: argparse.Namespace) -> Layer:
    """The settings flags the command was given (commands take all of them or a few)."""
    layer = Layer()
    for flag in FLAGS:
        value = getattr(args, flag.name, None)
        if value is None:
            continue
        value = flag.switch if flag.switch is not None else value
        layer.set((flag.section, flag.key), value, f"flag {flag.option}")
    if getattr(args, "etcd", None):
        endpoints = [e.strip() for e in args.etcd.split(",") if e.strip()]
        layer.set(("etcd", "endpoints"), endpoints, "flag --etcd")
        layer.set(("etcd", "enabled"), True, "flag --etcd")
    return layer


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"dnsd {__version__}")
        return EXIT_OK
    if args.command == "check-config":
        return _check_config(args)
    if args.command in ("register", "deregister"):
        return _registration(args)
    missing = args.command == "records" and not args.http
    missing |= args.command == "query" and not args.server
    if missing:  # find the server from the settings serve reads
        try:
            config = _settings(args)
        except ConfigError as exc:
            _complain(exc)
            return EXIT_CONFIG
        if args.command == "records":
            args.http = _loopback(config.http.listen) if config.http.listen else DEFAULT_HTTP
        else:
            args.server = _loopback(config.server.listen[0])
    if args.command == "records" and args.nodes:
        return tools.print_nodes(args.http, args.json)
    if args.command == "records":
        return tools.print_records(args.http, args.name, args.source, args.json)
    if args.command == "query":
        return tools.query(args.name, args.type, args.server, args.tcp, args.timeout)
    return _serve(args)


def _complain(exc: BaseException) -> None:
    """An error on stderr, "dnsd: " before each of its lines (a ConfigError lists them all)."""
    for line in str(exc).splitlines() or [""]:
        print(f"dnsd: {line}", file=sys.stderr)


def _check_config(args: argparse.Namespace) -> int:
    path = args.file or args.config or os.environ.get("DNSD_CONFIG") or "defaults"
    try:
        config = _settings(args)
        settings = static_settings(config)
        static = StaticSource(RecordStore(), lambda: settings, settings)
        owners = static.build(settings)
    except ConfigError as exc:
        _complain(exc)
        return EXIT_CONFIG
    if static.bad_lines:
        for example in static.bad_examples[:20]:
            print(f"dnsd: {example}", file=sys.stderr)
        print(f"dnsd: {path}: {static.bad_lines} bad hosts-file line(s)", file=sys.stderr)
        return EXIT_CONFIG
    count = sum(len(records) for records in owners.values())
    if args.print:
        print(settings_text(config), end="")
    print(f"{path}: ok ({count} static records)", file=sys.stderr if args.print else sys.stdout)
    for warning in config_warnings(config):
        print(f"{path}: warning: {warning}", file=sys.stderr)
    if config.static.outside_zones:
        zones = ", ".join(config.server.zones)
        print(
            f"{path}: note: static.outside_zones is on: static names outside {zones} are "
            "answered with authority to every client"
        )
    return EXIT_OK


def _registration(args: argparse.Namespace) -> int:
    try:
        config = _settings(args)
        if args.command == "deregister":
            removed = register.deregister(config, args.name, args.address)
            if not removed:
                print(f"dnsd: no registration of {args.name} found", file=sys.stderr)
                return EXIT_ERROR
            print(f"deregistered {args.name}: {removed} key(s)")
            return EXIT_OK
        entry = register.registration(
            config, args.name, args.address, args.port, args.service, args.proto, args.ttl,
            args.wildcard, args.txt,
        )  # fmt: skip
    except (ConfigError, ValueError) as exc:
        _complain(exc)
        return EXIT_CONFIG
    except Exception as exc:  # etcd out of reach
        _etcd_unreachable(args, exc)
        return EXIT_ERROR
    logs.setup(config.log.format, config.log.level)
    if register.outside_zones(entry.name, config.server.zones):
        zones = ", ".join(config.server.zones)
        print(f"dnsd: note: {entry.name} is outside this host's zones ({zones}): only dnsds "
              "serving its zone answer it", file=sys.stderr)  # fmt: skip
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        register.register(config, entry, stop, lambda line: print(line, flush=True))
    except register.RegistrationError as exc:
        _complain(exc)
        return EXIT_CONFIG
    except Exception as exc:  # etcd out of reach while checking the name
        _etcd_unreachable(args, exc)
        return EXIT_ERROR
    return EXIT_OK


def _etcd_unreachable(args: argparse.Namespace, exc: BaseException) -> None:
    """Which etcd could not be reached, why, and where its endpoints were set."""
    try:
        config = _settings(args)
    except ConfigError:
        print(f"dnsd: etcd: {explain(exc)}", file=sys.stderr)
        return
    endpoints = ", ".join(config.etcd.endpoints)
    origin = config.origins.get(("etcd", "endpoints"))
    where = f"from {origin}" if origin else "the default: set them with --etcd HOST:PORT,..."
    print(f"dnsd: etcd at {endpoints} ({where}): {explain(exc)}", file=sys.stderr)


GIL_SWITCH_INTERVAL_S = 0.001


def _serve(args: argparse.Namespace) -> int:
    def load_config() -> Config:
        return _settings(args)

    try:
        config = load_config()
    except ConfigError as exc:
        _complain(exc)
        return EXIT_CONFIG
    logs.setup(config.log.format, config.log.level)
    for warning in config_warnings(config):
        logger.warning("configuration: %s", warning)
    # A thread waiting for the GIL gets it within this time (CPython's default is 5 ms): with
    # the etcd watch and the event loop busy on a bulk change, a UDP listener thread otherwise
    # waits for many such turns (probe p99 at 100,000 keys: 110-210 ms; with 1 ms: 11-23 ms).
    # Idle or single-threaded work never waits for a turn, so the hot path pays nothing.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        asyncio.run(_run(Daemon(config, load_config)))
    except (StartupError, ConfigError) as exc:
        logger.error("%s", exc)
        _complain(exc)
        return EXIT_CONFIG
    return EXIT_OK


async def _run(daemon: Daemon) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # SIGTERM/SIGINT: handled even while the loop is busy, and the exit forced at the deadline.
    guard = ShutdownGuard(SHUTDOWN_DEADLINE_S, stop_soon(loop, stop))
    guard.install(signal.SIGTERM, signal.SIGINT)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    try:
        await daemon.start()
        await stop.wait()
        logger.info("shutting down")
    finally:
        await daemon.stop()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
