"""The static source: records from the config file and from hosts files.

Writes the store under source ``static`` with one owner per origin (``config`` and each hosts
file), all replaced in one atomic call.  Reloads on SIGHUP (``reload``) and when a watched file
changes (``watch``); a reload that fails keeps the last good records.  Knows nothing about DNS
wire format or the resolver.

Threads: a reload reads the config and parses the hosts files on a daemon thread
(``on_daemon_thread``), one reload at a time; ``build`` there touches only what it returns
and ``bad_lines``/``bad_examples`` (read by ``check-config`` after it returns, never by the
running daemon).  The store is written on the event loop, in slices.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dnsd.admission import Admission
from dnsd.config_error import ConfigError
from dnsd.heap import Settler
from dnsd.logs import Throttled, event
from dnsd.offload import on_daemon_thread
from dnsd.protocol import MAX_LABEL_BYTES, MAX_NAME_TEXT_LEN, MAX_TTL
from dnsd.record import MxValue, Record, SrvValue, Value
from dnsd.records import RecordStore
from dnsd.slices import run_in_slices
from dnsd.sources.lifecycle import JOIN_TIMEOUT_S, OK, SourceHealth
from dnsd.stats import Stats

logger = logging.getLogger(__name__)

SOURCE = "static"
_reloads_logged = Throttled(logger, interval_s=10.0)  # per kind: a SIGHUP storm, a bad file
MAX_BAD_LINES_KEPT = 100  # bad hosts lines remembered with their reason; the rest counted
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_*")


@dataclass(frozen=True)
class StaticSettings:
    """What the static source reads: the ``[static]`` section, the zones and default TTL
    (``server.*``) and the config file it watches."""

    zones: list[str]
    ttl: int
    records: list[dict[str, Any]]
    hosts: list[str]
    watch_interval: float
    outside_zones: bool
    max_hosts_bytes: int
    path: str | None  # the config file (watched; error lines point into it)


def admission(settings: StaticSettings) -> Admission:
    """The store's admission rules: static names may leave the zones only when
    ``static.outside_zones`` says so."""
    return Admission(settings.zones, (SOURCE,) if settings.outside_zones else ())


class AbsoluteNames:
    """Turns user-written names into absolute ones: relative names belong to the first zone."""

    def __init__(self, zones: list[str]) -> None:
        self.zones = zones

    def absolute(self, name: str, owner: bool = False) -> str:
        """``name`` made absolute (relative names are under the first zone); an ``owner``
        name may be a wildcard (``*.dev``: RFC 4592, the leftmost label only)."""
        name = name.strip().lower()
        if not name:
            raise ValueError("empty name")
        if name.endswith("."):
            absolute = name
        elif any(name + "." == z or (name + ".").endswith("." + z) for z in self.zones):
            absolute = name + "."
        else:
            absolute = f"{name}.{self.zones[0]}" if self.zones[0] != "." else name + "."
        self._check(absolute, owner)
        return absolute

    @staticmethod
    def _check(name: str, owner: bool) -> None:
        if len(name) > MAX_NAME_TEXT_LEN + 1:
            raise ValueError(f"name too long: {name!r}")
        for index, label in enumerate(name[:-1].split(".")):
            if not label or len(label) > MAX_LABEL_BYTES or not set(label) <= _NAME_CHARS:
                raise ValueError(f"not a valid DNS name: {name!r}")
            if "*" in label and not (owner and index == 0 and label == "*"):
                raise ValueError(
                    f"a wildcard is a whole leftmost label of a record's name: {name!r}"
                )


def _address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None
    if address.version != version:
        raise ValueError(f"not an IPv{version} address: {text!r}")
    return str(address)


def _ints(parts: list[str], count: int, what: str) -> list[int]:
    try:
        numbers = [int(p) for p in parts[:count]]
    except ValueError:
        raise ValueError(f"{what}: expected {count} numbers, got {parts[:count]}") from None
    if len(numbers) != count or any(not 0 <= n <= 65535 for n in numbers):
        raise ValueError(f"{what}: expected {count} numbers in 0..65535")
    return numbers


def parse_value(rtype: str, value: Any, names: AbsoluteNames) -> Value:
    """Presentation-format rdata (``"10 50 8080 web"`` for SRV) -> a record value."""
    if rtype == "TXT":
        parts = [value] if isinstance(value, str) else value
        if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
            raise ValueError("TXT value must be a string or a list of strings")
        if any(len(p.encode()) > 255 for p in parts):
            raise ValueError("TXT strings are at most 255 bytes each")
        return tuple(parts)
    if not isinstance(value, str):
        raise ValueError(f"{rtype} value must be a string")
    if rtype in ("A", "AAAA"):
        return _address(value, 4 if rtype == "A" else 6)
    if rtype in ("CNAME", "PTR", "NS"):
        return names.absolute(value)
    parts = value.split()
    if rtype == "SRV":
        if len(parts) != 4:
            raise ValueError("SRV value is 'priority weight port target'")
        priority, weight, port = _ints(parts, 3, "SRV")
        return SrvValue(priority, weight, port, names.absolute(parts[3]))
    if rtype == "MX":
        if len(parts) != 2:
            raise ValueError("MX value is 'preference exchange'")
        (preference,) = _ints(parts, 1, "MX")
        return MxValue(preference, names.absolute(parts[1]))
    raise ValueError(f"unsupported record type {rtype!r}")


def _admitted(record: Record, rules: Admission | None) -> Record:
    why = rules.problem(SOURCE, record) if rules is not None else None
    if why is not None:
        hint = " (set static.outside_zones = true to serve it)" if "outside" in why else ""
        raise ValueError(f"{record.name} {record.rtype}: {why}{hint}")
    return record


_RECORD_TABLE = re.compile(r"^\s*\[\[\s*static\.records\s*\]\]")
_RECORD_INDEX = re.compile(r"^static\.records\[(\d+)\]")


def _located(path: str | None, message: str) -> str:
    """``FILE:LINE: message`` for an error in the N-th ``[[static.records]]`` table of the
    config file (the line of its header); the message as it is when that cannot be found."""
    index = _RECORD_INDEX.match(message)
    if path is None or index is None:
        return message
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            headers = [n for n, line in enumerate(handle, 1) if _RECORD_TABLE.match(line)]
    except OSError:
        return message
    wanted = int(index.group(1))
    return f"{path}:{headers[wanted]}: {message}" if wanted < len(headers) else message


def config_records(
    specs: list[dict[str, Any]],
    names: AbsoluteNames,
    default_ttl: int,
    rules: Admission | None = None,
) -> list[Record]:
    """``[[static.records]]`` tables -> records; a bad one raises ConfigError naming it."""
    records = []
    for index, spec in enumerate(specs):
        where = f"static.records[{index}]"
        unknown = set(spec) - {"name", "type", "value", "ttl"}
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        try:
            rtype = str(spec["type"]).upper()
            ttl = spec.get("ttl", default_ttl)
            if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= MAX_TTL:
                raise ValueError(f"bad ttl {ttl!r}")
            name = names.absolute(str(spec["name"]), owner=True)
            record = Record(name, rtype, parse_value(rtype, spec["value"], names), ttl)
            records.append(_admitted(record, rules))
        except KeyError as exc:
            raise ConfigError(f"{where}: missing key {exc.args[0]!r}") from None
        except ValueError as exc:
            raise ConfigError(f"{where} ({spec.get('name')!r}): {exc}") from None
    return records


def parse_hosts(
    text: str, path: str, names: AbsoluteNames, ttl: int, rules: Admission | None = None
) -> tuple[list[Record], list[str], int]:
    """Hosts-file lines ``IP name [name...]`` -> (records, the first ``MAX_BAD_LINES_KEPT``
    errors naming file:line, the number of bad lines)."""
    records: list[Record] = []
    errors: list[str] = []
    bad = 0
    # Lines one at a time (no list of a million strings for the collector to walk at every
    # young collection while a worker thread parses: that stalled the event loop too).
    for number, line in enumerate(io.StringIO(text), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            if len(fields) < 2:
                raise ValueError("expected 'IP name [name...]'")
            address = ipaddress.ip_address(fields[0].split("%", 1)[0])
            rtype = "A" if address.version == 4 else "AAAA"
            for name in fields[1:]:
                record = Record(names.absolute(name, owner=True), rtype, str(address), ttl)
                records.append(_admitted(record, rules))
        except ValueError as exc:
            bad += 1
            if len(errors) < MAX_BAD_LINES_KEPT:
                errors.append(f"{path}:{number}: {exc}")
    return records, errors, bad


class StaticSource:
    name = SOURCE
    stop_timeout_s = JOIN_TIMEOUT_S

    def __init__(
        self,
        store: RecordStore,
        load_settings: Callable[[], StaticSettings],
        settings: StaticSettings,
        stats: Stats | None = None,
    ) -> None:
        """``load_settings`` re-reads the settings (the config file) on a reload; raises
        ConfigError."""
        self._stats = stats or Stats()
        self._store = store
        self._load_settings = load_settings
        self._settings = settings
        self._stamps: dict[str, tuple[int, int, int] | None] = {}
        # Big hosts files: the loaded records leave the collector's view (dnsd.heap), so a
        # later full collection does not walk them while the event loop waits.
        self._heap = Settler()
        self._reloading = asyncio.Lock()  # one reload at a time, in the order asked
        self._waiting = False  # a requested reload has not started yet
        self._reloads: set[asyncio.Task[bool]] = set()
        self.bad_lines = 0  # hosts-file lines skipped by the last build
        self.bad_examples: list[str] = []  # the first of them, file:line and why

    def build(self, settings: StaticSettings) -> dict[str, list[Record]]:
        """Every owner's records (raises ConfigError if the records are bad)."""
        names = AbsoluteNames(settings.zones)
        ttl = settings.ttl
        rules = admission(settings)
        self.bad_lines = 0
        self.bad_examples = []
        try:
            owners = {"config": config_records(settings.records, names, ttl, rules)}
        except ConfigError as exc:
            raise ConfigError(_located(settings.path, str(exc))) from None
        limit = settings.max_hosts_bytes
        for path in settings.hosts:
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    size = os.fstat(handle.fileno()).st_size
                    if size > limit:
                        raise ConfigError(
                            f"{path}: hosts file of {size} bytes is over static.max_hosts_bytes "
                            f"({limit}): not read"
                        )
                    text = handle.read(limit + 1)  # a file growing while read stops here too
            except OSError as exc:
                raise ConfigError(f"{path}: cannot read hosts file: {exc.strerror}") from None
            if len(text) > limit:
                raise ConfigError(f"{path}: hosts file over static.max_hosts_bytes ({limit})")
            records, errors, bad = parse_hosts(text, path, names, ttl, rules)
            if bad:  # one line per file and load, however many lines are bad
                shown = "; ".join(errors[:3])
                logger.warning(
                    "hosts file %s: %d bad line(s) skipped, e.g. %s",
                    path,
                    bad,
                    shown,
                    extra=event("bad_hosts_lines", SOURCE),
                )
                for error in errors[:MAX_BAD_LINES_KEPT]:
                    logger.debug("skipping bad hosts line %s", error)
            self.bad_lines += bad
            self.bad_examples += errors
            owners[path] = records
        return owners

    def health(self) -> SourceHealth:
        """Always OK: a bad reload keeps the last good records (and start-up refuses a bad
        config)."""
        return SourceHealth(OK, "", True, {"records": self._store.count(SOURCE)})

    def stop(self) -> None:
        """Nothing to stop: the file watch is ``run``, which the daemon cancels."""

    def join(self, timeout_s: float) -> None:
        """No threads."""

    def load(self) -> int:
        """First load: errors propagate (the daemon refuses to start on a bad config)."""
        owners = self.build(self._settings)
        self._apply(self._settings, owners)
        return sum(len(r) for r in owners.values())

    def request_reload(self) -> None:
        """Reload soon (SIGHUP): at most one reload runs and one waits, however many ask."""
        if self._waiting:
            return
        self._waiting = True
        task = asyncio.get_running_loop().create_task(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> bool:
        """Re-read the config file and hosts files; on any error keep the last good records.
        Reading and parsing run on a worker thread (a 16 MiB hosts file is seconds of work),
        so the event loop serves meanwhile; the result is applied on the loop.  Counted
        (``Stats.reloads``, ``reload_errors``) whether SIGHUP or a file change asked."""
        async with self._reloading:
            self._waiting = False
            try:
                return await self._reload_once()
            finally:
                self._stats.reloads += 1  # counted once done, whatever came of it

    async def _reload_once(self) -> bool:
        try:
            settings = await on_daemon_thread(self._load_settings, "reload config")
            owners = await on_daemon_thread(lambda: self.build(settings), "parse hosts")
        except ConfigError as exc:
            _reloads_logged.error(
                f"reload failed: {exc}", "reload failed, keeping the last good records: %s", exc
            )
            # Remember the bad files' state: retry when they change again, don't loop on them.
            self._stamps = {path: _stamp(path) for path in self._stamps}
            self._stats.reload_errors += 1
            return False
        await self._apply_in_slices(settings, owners)
        _reloads_logged.info(
            "reloaded", "static records reloaded: %d", sum(len(r) for r in owners.values())
        )
        return True

    def _apply(self, settings: StaticSettings, owners: dict[str, list[Record]]) -> None:
        """The first load: before dnsd serves, so in one go."""
        self._adopt(settings)
        self._store.replace_source(SOURCE, owners)
        self._heap.changed(sum(len(records) for records in owners.values()))

    async def _apply_in_slices(
        self, settings: StaticSettings, owners: dict[str, list[Record]]
    ) -> None:
        """A reload, while dnsd serves: the store changes a slice at a time (200,000 names are
        about 2 s of work), the loop answering queries between slices."""
        self._adopt(settings)
        steps = self._store.replace_source_steps(SOURCE, owners)
        await run_in_slices(steps, self._store.publish_partial)
        self._heap.changed(sum(len(records) for records in owners.values()))

    def _adopt(self, settings: StaticSettings) -> None:
        self._settings = settings
        self._stamps = {path: _stamp(path) for path in self._watched()}

    def _watched(self) -> list[str]:
        paths = list(self._settings.hosts)
        if self._settings.path:
            paths.append(self._settings.path)
        return paths

    def changed(self) -> bool:
        return any(_stamp(path) != stamp for path, stamp in self._stamps.items())

    async def run(self) -> None:
        """Poll the watched files; reload when one changes (until cancelled)."""
        while True:
            interval = self._settings.watch_interval
            await asyncio.sleep(interval if interval > 0 else 3600)
            if interval > 0 and self.changed():
                logger.info("a watched file changed, reloading")
                await self.reload()


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino
