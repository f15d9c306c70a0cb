"""The Docker source: keeps the store's ``docker`` records in step with the running containers.

Threads keep the blocking Docker SDK off the event loop:
- the *reader* subscribes to container and network events, then asks for a full resync (so
  nothing is lost between subscribing and listing), and queues every event; when the stream
  ends or Docker is unreachable it reconnects with backoff;
- the *worker* takes queued jobs in order (resync, event, inspection result).  An event that
  needs an inspection hands it to a pool of ``INSPECT_WORKERS`` threads, whose result comes
  back through the same queue; each container is handed to the event loop as soon as its own
  inspection is back (a later event for it makes an earlier inspection stale).  When
  ``QUICK_SYNC_MIN`` inspections are on their way (a deployment, a node drain), one list call
  replaces them: everything it shows is served at once, then inspected for what the list
  lacks (hostnames, aliases).  Container records come from ``docker_names``; the event loop
  writes the store.
A periodic resync (default 60 s) heals anything missed.  While Docker is away the last known
records stay; the resync after reconnecting adds what started and drops what went away.

Who owns what: the event loop owns ``_built``, ``_claims``, ``_warned``, ``_notify_due``,
``state``/``reason``/``synced_at`` and the store writes (``_hand`` carries every result over,
in order).  The worker owns ``_known`` (what it last inspected or listed, by container id: a
resync keeps what did not change without asking the loop), ``_fingerprints``, ``_pending``,
``_ticket`` and ``_changes``; the inspecting threads only call the Engine and queue the result.
A ``Built`` crosses from the worker to the loop and is never changed by the worker again (the
loop sets its ``served`` and ``conflicts``).  ``_resync_queued`` is set by the reader, the
loop and the worker: under ``_resync_lock``.  ``_stream`` is set by the reader and closed from
any thread (``_close_stream`` swaps it out under the same lock, so it is closed once).  Each
counter of ``Stats`` has one writer thread: ``docker_events`` the worker,
``docker_reconnects`` the reader, ``docker_resyncs`` the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from dnsd.logs import event
from dnsd.record import Record, Value
from dnsd.records import RecordStore
from dnsd.sources.docker_claims import NameClaims, claims_of
from dnsd.sources.docker_names import (
    Built,
    DockerNaming,
    attrs_from_list,
    container_records,
    list_fingerprint,
)
from dnsd.sources.errors import reason
from dnsd.sources.lifecycle import (
    ABSENT,
    DOWN,
    JOIN_TIMEOUT_S,
    OK,
    Backoff,
    LoopHand,
    SourceHealth,
    Threads,
)
from dnsd.stats import Stats

logger = logging.getLogger(__name__)

SOURCE = "docker"
DEFAULT_URL = "unix:///var/run/docker.sock"
API_TIMEOUT_S = 10
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 15.0
RESYNC_INTERVAL_S = 60.0
INSPECT_WORKERS = 8
QUICK_SYNC_MIN = 32  # with more unknown containers, answer from the list before inspecting
QUICK_APPLY_WAIT_S = 30.0
HAND_BATCH = 256  # changes handed to the loop at once while more jobs are queued

# Event actions that change what a container publishes (inspect it again) ...
INSPECT_ACTIONS = frozenset({"start", "unpause", "rename", "restart", "update"})
# ... and those after which it publishes nothing. ("kill" is not one: `docker kill -s HUP`
# only signals; a container that does stop also sends "die".)
REMOVE_ACTIONS = frozenset({"die", "stop", "destroy", "pause"})


@dataclass(frozen=True)
class DockerSettings:
    url: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    resync_interval_s: float = RESYNC_INTERVAL_S


def docker_reason(exc: BaseException, url: str) -> str:
    """Why the Engine is unreachable, in words: no socket, nothing listening, the socket's
    permissions (with the fix), else the error's own text."""
    text = reason(exc)
    where = url or os.environ.get("DOCKER_HOST") or DEFAULT_URL
    if "FileNotFoundError" in text or "No such file or directory" in text:
        return f"no Docker socket at {where}"
    if "ConnectionRefusedError" in text or "Connection refused" in text:
        return f"nothing answers at {where} (is dockerd running?)"
    if "Permission denied" in text or isinstance(exc, PermissionError):
        path = where.removeprefix("unix://")
        return (
            f"permission denied on {path}: dnsd's user needs the socket's group "
            f'(docker run --group-add "$(stat -c %g {path})", or SupplementaryGroups= in '
            "systemd)"
        )
    return text


def make_client_factory(settings: DockerSettings) -> Callable[[], Any]:
    def factory() -> Any:
        import docker  # imported lazily: dnsd runs without the SDK when Docker is off

        class EngineAPI(docker.APIClient):
            """requests lets REQUESTS_CA_BUNDLE replace a session's own CA file: for the Engine
            the configured CA must win."""

            def merge_environment_settings(self, *args: Any) -> Any:
                merged = super().merge_environment_settings(*args)
                if isinstance(self.verify, str):
                    merged["verify"] = self.verify
                return merged

        tls: Any = False
        if settings.tls_cert or settings.tls_ca:
            cert = (settings.tls_cert, settings.tls_key) if settings.tls_cert else None
            tls = docker.tls.TLSConfig(
                client_cert=cert, ca_cert=settings.tls_ca or None, verify=bool(settings.tls_ca)
            )
        url = settings.url or os.environ.get("DOCKER_HOST") or DEFAULT_URL
        client = docker.DockerClient.__new__(docker.DockerClient)
        client.api = EngineAPI(base_url=url, version="auto", timeout=API_TIMEOUT_S, tls=tls)
        return client

    return factory


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
        self._client_factory = client_factory or make_client_factory(settings)
        self._jobs: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._threads = Threads()
        self._stopping = self._threads.stopping
        self._hand = LoopHand()
        self._stream: Any = None
        self._fingerprints: dict[str, tuple[Any, ...]] = {}
        self._built: dict[str, Built] = {}  # the event loop's
        self._known: dict[str, Built] = {}  # the worker's
        self._resync_lock = threading.Lock()
        self._claims = NameClaims()
        self._warned: dict[str, set[str]] = {}
        self._resync_queued = False
        # The worker's: container id -> the ticket and future of its inspection on the way.
        self._pending: dict[str, tuple[int, Future[Any]]] = {}
        self._ticket = 0
        self._changes: dict[str, Built | None] = {}  # the worker's, not yet handed to the loop
        self._notify_due = False  # the loop's
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
        self._hand.bind(asyncio.get_running_loop())
        self._threads.start(self._read_events, "docker-events")
        self._threads.start(self._work, "docker-worker")
        try:
            while True:
                await asyncio.sleep(self._settings.resync_interval_s)
                self._queue_resync()
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
        self._threads.stop()
        self._jobs.put(("stop", None))
        self._close_stream()

    def join(self, timeout_s: float) -> None:
        self._threads.join(timeout_s)

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

    # --- reader thread ---------------------------------------------------------------------
    def _read_events(self) -> None:
        backoff = Backoff(BACKOFF_MIN_S, BACKOFF_MAX_S)
        while not self._stopping.is_set():
            try:
                client = self._client_factory()
                self._stream = client.events(
                    decode=True, filters={"type": ["container", "network"]}
                )
            except Exception as exc:
                self._lost(f"unreachable: {docker_reason(exc, self._settings.url)}")
                self._stopping.wait(backoff.next())
                continue
            backoff.reset()
            self._queue_resync()  # subscribed first, now list: nothing falls in between
            try:
                for event in self._stream:
                    self._jobs.put(("event", event))
            except Exception as exc:
                logger.debug("docker event stream failed: %r", exc)
            finally:
                self._close_stream()
                with contextlib.suppress(Exception):
                    client.close()
            if not self._stopping.is_set():
                self._lost("event stream ended")
                self._stats.docker_reconnects += 1
                self._stopping.wait(backoff.next())

    def _close_stream(self) -> None:
        with self._resync_lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()

    def _queue_resync(self) -> None:
        with self._resync_lock:
            if self._resync_queued:
                return
            self._resync_queued = True
        self._jobs.put(("resync", None))

    # --- worker thread -----------------------------------------------------------------------
    def _work(self) -> None:
        client = None
        pool = ThreadPoolExecutor(INSPECT_WORKERS, thread_name_prefix="docker-inspect")
        try:
            while True:
                kind, payload = self._jobs.get()
                if kind == "stop":
                    return
                # A resync asked for, or a burst (many inspections on their way): one list
                # call serves them all at once.
                sync = kind == "resync" or len(self._pending) >= QUICK_SYNC_MIN
                try:
                    client = client or self._client_factory()
                    if sync:
                        self._resync(client, pool, also=kind)
                    elif kind == "event":
                        self._on_event(client, pool, payload)
                    else:
                        self._on_inspected(*payload)
                except Exception as exc:
                    client = None
                    if sync:
                        self._lost(f"resync failed: {reason(exc)}")
                        self._close_stream()  # a hung stream (frozen daemon) reconnects too
                    else:
                        logger.debug("docker %s %s not handled: %r", kind, payload, exc)
                if self._changes and (len(self._changes) >= HAND_BATCH or self._jobs.empty()):
                    self._hand(self._apply_changes, self._changes)
                    self._changes = {}
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _on_event(self, client: Any, pool: ThreadPoolExecutor, event: dict[str, Any]) -> None:
        self._stats.docker_events += 1
        kind = event.get("Type")
        action = str(event.get("Action") or event.get("status") or "")
        actor = event.get("Actor") or {}
        if kind == "network":
            if action not in ("connect", "disconnect"):
                return
            container_id = (actor.get("Attributes") or {}).get("container")
        elif kind == "container":
            container_id = actor.get("ID") or event.get("id")
        else:
            return
        if not container_id:
            return
        verb = action.split(":", 1)[0]
        if kind == "container" and verb in REMOVE_ACTIONS:
            self._forget_pending(container_id)  # an inspection on its way is now stale
            self._known.pop(container_id, None)
            self._changes[container_id] = None
        elif kind == "network" or verb in INSPECT_ACTIONS or verb == "health_status":
            self._forget_pending(container_id)
            self._ticket += 1
            ticket = self._ticket
            future = pool.submit(self._try_inspect, client, container_id)
            self._pending[container_id] = (ticket, future)
            future.add_done_callback(lambda done: self._inspected(container_id, ticket, done))

    def _forget_pending(self, container_id: str | None = None) -> None:
        """The inspection on its way for one container (None: for all) is stale: not started,
        it is cancelled; started, its result is ignored."""
        for cid in [container_id] if container_id else list(self._pending):
            entry = self._pending.pop(cid, None)
            if entry is not None:
                entry[1].cancel()

    def _inspected(self, container_id: str, ticket: int, done: Future[Any]) -> None:
        """In the inspecting thread: the result goes back to the worker through the queue."""
        if not done.cancelled():
            self._jobs.put(("inspected", (container_id, ticket, done.result())))

    def _on_inspected(
        self, container_id: str, ticket: int, result: Built | Exception | None
    ) -> None:
        """An inspection is back: applied only if it is the latest asked for that container
        (a later event, removal or resync makes it stale)."""
        entry = self._pending.get(container_id)
        if entry is None or entry[0] != ticket:
            return
        del self._pending[container_id]
        if isinstance(result, Exception):
            logger.debug("docker inspect %s failed: %r", container_id, result)
            return  # what was known stays; the next resync inspects it again
        if result is None:
            self._known.pop(container_id, None)
        else:
            self._known[container_id] = result
        self._changes[container_id] = result

    def _inspect(self, client: Any, container_id: str) -> Built | None:
        import docker.errors

        try:
            attrs = client.api.inspect_container(container_id)
        except docker.errors.NotFound:
            return None
        return container_records(attrs, self._naming)

    def _drain(self) -> None:
        """Before a list call: the events queued so far are shown by the list; inspections
        already back are applied first (the start of a burst is served before the list call
        ends), those still on their way are stale.  A stop is put back."""
        while True:
            try:
                kind, payload = self._jobs.get_nowait()
            except queue.Empty:
                return
            if kind == "stop":
                self._jobs.put(("stop", None))
                return
            if kind == "event":
                self._stats.docker_events += 1
            elif kind == "inspected":
                self._on_inspected(*payload)

    def _resync(self, client: Any, pool: ThreadPoolExecutor, also: str = "resync") -> None:
        started = time.monotonic()
        with self._resync_lock:
            self._resync_queued = False
        if also == "event":
            self._stats.docker_events += 1
        self._drain()
        self._forget_pending()
        if self._changes:  # removals decided before the list go first, in order
            self._hand(self._apply_changes, self._changes)
            self._changes = {}
        entries = client.api.containers()  # running containers only
        owners: dict[str, Built] = {}
        fingerprints = {entry["Id"]: list_fingerprint(entry) for entry in entries}
        stale = []
        for container_id, fingerprint in fingerprints.items():
            known = self._known.get(container_id)
            if known is not None and self._fingerprints.get(container_id) == fingerprint:
                owners[container_id] = known
            else:
                stale.append(container_id)
        if len(stale) >= QUICK_SYNC_MIN:
            # Many unknown containers (a first sync): serve what the list shows at once, then
            # inspect for what it lacks (hostnames, aliases) and apply the full picture.
            by_id = {entry["Id"]: entry for entry in entries}
            quick = dict(owners)
            for container_id in stale:
                quick[container_id] = container_records(
                    attrs_from_list(by_id[container_id]), self._naming
                )
            applied = threading.Event()
            took_s = time.monotonic() - started
            self._hand(self._apply_quick, quick, took_s, applied)
            applied.wait(QUICK_APPLY_WAIT_S)  # inspecting meanwhile would only slow it down
        # Inspect what changed, several at a time (the Engine serves them concurrently).
        results = list(pool.map(lambda cid: self._try_inspect(client, cid), stale))
        failed = 0
        for container_id, result in zip(stale, results, strict=True):
            if isinstance(result, Exception):
                failed += 1
                known = self._known.get(container_id)
                if known is not None:  # keep what we had; the next resync inspects it again
                    owners[container_id] = known
                fingerprints.pop(container_id, None)
            elif result is not None:
                owners[container_id] = result
        if failed and failed == len(stale):
            raise RuntimeError(f"inspecting {failed} containers failed")
        if failed:
            logger.warning(
                "docker resync: %d of %d inspections failed, retried at the next",
                failed,
                len(stale),
            )
        self._fingerprints = {cid: fingerprints[cid] for cid in owners if cid in fingerprints}
        self._known = dict(owners)
        self._hand(self._apply_all, owners, time.monotonic() - started)

    def _try_inspect(self, client: Any, container_id: str) -> Built | Exception | None:
        try:
            return self._inspect(client, container_id)
        except Exception as exc:
            return exc

    def _lost(self, reason: str) -> None:
        self._hand(self._set_down, reason)

    # --- event loop: the only place that writes the store ---------------------------------
    def _set_down(self, reason: str) -> None:
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

    def _apply_changes(self, changes: dict[str, Built | None]) -> None:
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

    def _apply_quick(
        self, owners: dict[str, Built], took_s: float, applied: threading.Event
    ) -> None:
        try:
            self._apply_all(owners, took_s, "from the list")
        finally:
            applied.set()

    def _apply_all(self, owners: dict[str, Built], took_s: float, how: str = "inspected") -> None:
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
