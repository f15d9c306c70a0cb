"""The Docker source: keeps the store's ``docker`` records in step with the running containers.

Its Engine side (``docker_engine``: threads reading events, inspecting and listing) hands
every result to this side, which runs on the event loop only: it holds each container's
records (``_built``), settles who may serve a name (``docker_claims``), writes the store, tells
the subscribers (the publisher) once per turn of the loop, and reports its health.  A periodic
resync (default 60 s) heals anything missed.  While Docker is away the last known records
stay; the resync after reconnecting adds what started and drops what went away.

Everything here is the event loop's: ``_built``, ``_claims``, ``_warned``, ``_notify_due``,
``state``/``reason``/``synced_at``, the store writes and ``Stats.docker_resyncs``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from dnsd.logs import event
from dnsd.record import Record, Value
from dnsd.records import RecordStore
from dnsd.sources.docker_claims import NameClaims, claims_of
from dnsd.sources.docker_engine import (
    DEFAULT_URL,
    DockerSettings,
    EngineWatcher,
    make_client_factory,
)
from dnsd.sources.docker_names import Built, DockerNaming
from dnsd.sources.lifecycle import ABSENT, DOWN, JOIN_TIMEOUT_S, OK, SourceHealth
from dnsd.stats import Stats

logger = logging.getLogger(__name__)

SOURCE = "docker"


class DockerSource:
    name = SOURCE
    stop_timeout_s = JOIN_TIMEOUT_S

    def __init__(
        self,
        store: RecordStore,
        naming: DockerNaming,
        settings: DockerSettings,
        stats: Stats,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        self._store = store
        self._naming = naming
        self._settings = settings
        self._stats = stats
        self._engine = EngineWatcher(
            self, naming, settings, stats, client_factory or make_client_factory(settings)
        )
        self._built: dict[str, Built] = {}
        self._claims = NameClaims()
        self._warned: dict[str, set[str]] = {}
        self._notify_due = False
        self.state = DOWN  # OK once the first resync after connecting has landed
        self.reason = "not connected yet"
        self.synced_at: float | None = None
        # Called on the event loop after every change with all containers' records (publisher).
        self.subscribers: list[Callable[[dict[str, Built]], None]] = []

    @property
    def built(self) -> dict[str, Built]:
        """Every running container's records and state, by container id (event loop only)."""
        return self._built

    # --- lifecycle (event loop) ----------------------------------------------------------
    async def run(self) -> None:
        """Start the threads and queue periodic resyncs until cancelled."""
        self._engine.start(asyncio.get_running_loop())
        try:
            while True:
                await asyncio.sleep(self._settings.resync_interval_s)
                self._engine.queue_resync()
        finally:
            self.stop()

    @property
    def optional(self) -> bool:
        """Docker was not asked for (no URL, no DOCKER_HOST) and its default socket is absent:
        the source watches for it but does not hold readiness back."""
        if self._settings.url or os.environ.get("DOCKER_HOST"):
            return False
        return not os.path.exists(DEFAULT_URL.removeprefix("unix://"))

    def stop(self) -> None:
        self._engine.stop()

    def join(self, timeout_s: float) -> None:
        self._engine.join(timeout_s)

    def unserved(self) -> Iterator[tuple[str, str, Value | None, str, str]]:
        """(name, type, value, container id, reason): names a container may not serve (held
        by another) and containers withheld (unhealthy, paused, ignored)."""
        for container_id, box in list(self._built.items()):
            for record in box.records:
                holders = box.conflicts.get(record.name)
                if holders is not None:
                    why = f"name held by container {holders}"
                    yield record.name, record.rtype, record.value, container_id, why
            if box.withheld:
                name = f"{box.name}.{self._naming.zone}" if box.name else "-"
                yield name, "-", None, container_id, f"withheld: {box.withheld}"

    def container(self, container_id: str) -> tuple[str, str] | None:
        box = self._built.get(container_id)
        return None if box is None else (box.name, box.health or "none")

    def health(self) -> SourceHealth:
        health = SourceHealth.of(self.state == OK, self.reason, self.synced_at is not None)
        if health.state == DOWN and self.optional:
            return SourceHealth(ABSENT, health.reason)
        return health

    # --- the Engine side's results (event loop): the only place that writes the store -------
    def set_down(self, reason: str) -> None:
        if (self.state != DOWN or self.reason == "not connected yet") and self.optional:
            logger.info(  # Docker was not asked for: its absence is no failure
                "docker: %s; watching for it (--no-docker or docker.enabled = false: not "
                "at all)", reason.removeprefix("unreachable: "),
                extra=event("docker_absent", SOURCE),
            )  # fmt: skip
        elif self.state != DOWN or self.reason == "not connected yet":
            serving = (
                f"serving the last known {len(self._built)} containers"
                if self._built
                else "no containers known yet"
            )
            logger.warning(
                "docker %s; %s, retrying", reason, serving, extra=event("docker_lost", SOURCE)
            )
        self.state, self.reason = DOWN, reason

    def apply_changes(self, changes: dict[str, Built | None]) -> None:
        """Containers inspected again (a ``Built``) or gone (None), in the order decided."""
        owners: dict[str, list[Record]] = {}
        affected: set[str] = set()
        for container_id, built in changes.items():
            if built is None:
                self._built.pop(container_id, None)
                affected.discard(container_id)
                owners[container_id] = []
            else:
                self._built[container_id] = built
                self._report(container_id, built)
                affected.add(container_id)
            changed = self._claims.claim(container_id, claims_of(built) if built else {})
            # Every container claiming a name whose claimants changed may win or lose it.
            affected |= self._claims.claimants(changed)
        for container_id in affected:
            if container_id in self._built:
                owners[container_id] = self._serve(container_id)
        self._store.update_owners(SOURCE, owners)
        self._notify()

    def _serve(self, container_id: str) -> list[Record]:
        """What ``container_id`` serves under name ownership; conflicts logged once."""
        built = self._built[container_id]
        built.served, lost = self._claims.served(container_id, built.records)
        built.conflicts = {
            name: ", ".join(self._built[h].name if h in self._built else h for h in ids.split(","))
            for name, ids in lost.items()
        }
        warned = self._warned.setdefault(container_id, set())
        for name, holders in built.conflicts.items():
            line = f"name {name} held by {holders}"
            if line not in warned:
                warned.add(line)
                self._store.rejections[(SOURCE, "name owned")] += 1
                logger.warning(
                    "container %s may not join %s: it belongs to container %s",
                    built.name,
                    name,
                    holders,
                    extra=event("name_conflict", SOURCE, container=built.name, dns_name=name),
                )
        return built.served

    def apply_quick(
        self, owners: dict[str, Built], took_s: float, applied: threading.Event
    ) -> None:
        try:
            self.apply_all(owners, took_s, "from the list")
        finally:
            applied.set()

    def apply_all(self, owners: dict[str, Built], took_s: float, how: str = "inspected") -> None:
        self._built = dict(owners)
        for container_id, built in owners.items():
            self._report(container_id, built)
        self._warned = {cid: w for cid, w in self._warned.items() if cid in owners}
        self._claims = NameClaims()
        for container_id, built in owners.items():
            self._claims.claim(container_id, claims_of(built))
        serving = {cid: self._serve(cid) for cid in owners}
        applying = time.monotonic()
        changed = self._store.replace_source(SOURCE, serving)
        took_s += time.monotonic() - applying
        self._stats.docker_resyncs += 1
        self.synced_at = time.monotonic()
        self._notify()
        served = sum(1 for built in owners.values() if not built.withheld)
        records = sum(len(built.records) for built in owners.values())
        logger.debug(
            "docker resync: %d containers, %d records, %.1f ms (%s)",
            len(owners),
            records,
            took_s * 1000,
            how,
        )
        if self.state != OK:
            logger.info(
                "docker connected: %d running containers (%d served), %d records, %.0f ms",
                len(owners),
                served,
                records,
                took_s * 1000,
                extra=event("docker_synced", SOURCE),
            )
        elif changed:
            logger.info(
                "docker resync changed records: %d containers, %d records",
                len(owners),
                records,
                extra=event("docker_resynced", SOURCE),
            )
        self.state, self.reason = OK, ""

    def _notify(self) -> None:
        """Subscribers hear of the changes once per turn of the loop, however many came."""
        if self._notify_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._notify_now()
            return
        self._notify_due = True
        loop.call_soon(self._notify_now)

    def _notify_now(self) -> None:
        self._notify_due = False
        for subscriber in self.subscribers:
            try:
                subscriber(self._built)
            except Exception:
                logger.exception("docker subscriber failed")

    def _report(self, container_id: str, built: Built) -> None:
        """Log each problem of a container once (not at every resync) and count it."""
        warned = self._warned.setdefault(container_id, set())
        for note in built.notes:
            if note not in warned:
                warned.add(note)
                logger.info("%s", note, extra=event("name_mapped", SOURCE, container=built.name))
        for problem in built.problems:
            if problem not in warned:
                warned.add(problem)
                self._stats.bad_labels += 1
                logger.warning(
                    "container %s: %s (served with defaults)",
                    built.name,
                    problem,
                    extra={"container": built.name, "source": SOURCE},
                )
