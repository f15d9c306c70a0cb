"""The Docker source's Engine side: the threads that talk to the Docker Engine.

- the *reader* subscribes to container and network events, then asks for a full resync (so
  nothing is lost between subscribing and listing), and queues every event; when the stream
  ends or Docker is unreachable it reconnects with backoff;
- the *worker* takes queued jobs in order (resync, event, inspection result).  An event that
  needs an inspection hands it to a pool of ``INSPECT_WORKERS`` threads, whose result comes
  back through the same queue; each container is handed to the event loop as soon as its own
  inspection is back (a later event for it makes an earlier inspection stale).  When
  ``QUICK_SYNC_MIN`` inspections are on their way (a deployment, a node drain), one list call
  replaces them: everything it shows is served at once, then inspected for what the list
  lacks (hostnames, aliases).  Container records come from ``docker_names``.

Results go to the event loop side (``LoopSide``, the Docker source) through ``LoopHand``, in
the order decided here.  Who owns what: the worker owns ``_known`` (what it last inspected or
listed, by container id: a resync keeps what did not change without asking the loop),
``_fingerprints``, ``_pending``, ``_ticket`` and ``_changes``; the inspecting threads only
call the Engine and queue the result.  A ``Built`` crosses from the worker to the loop and is
never changed by the worker again.  ``_resync_queued`` is set by the reader, the loop and the
worker: under ``_resync_lock``.  ``_stream`` is set by the reader and closed from any thread
(``close_stream`` swaps it out under the same lock, so it is closed once).  Of the ``Stats``
counters, ``docker_events`` is the worker's, ``docker_reconnects`` the reader's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from dnsd.sources.docker_list import attrs_from_list, list_fingerprint
from dnsd.sources.docker_names import Built, DockerNaming, container_records
from dnsd.sources.errors import reason
from dnsd.sources.lifecycle import Backoff, LoopHand, Threads
from dnsd.stats import Stats

logger = logging.getLogger(__name__)

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


class LoopSide(Protocol):
    """What the Engine side hands its results to, always on the event loop."""

    def apply_changes(self, changes: dict[str, Built | None]) -> None:
        """Containers inspected again (a ``Built``) or gone (None), in the order decided."""

    def apply_quick(
        self, owners: dict[str, Built], took_s: float, applied: threading.Event
    ) -> None:
        """Every running container as the list shows it; ``applied`` set once done."""

    def apply_all(self, owners: dict[str, Built], took_s: float) -> None:
        """Every running container, inspected: the whole picture."""

    def set_down(self, reason: str) -> None:
        """The Engine is out of reach (or its stream ended): why."""


class EngineWatcher:
    """The reader, the worker and the inspecting pool of one Engine."""

    def __init__(
        self,
        loop_side: LoopSide,
        naming: DockerNaming,
        settings: DockerSettings,
        stats: Stats,
        client_factory: Callable[[], Any],
    ) -> None:
        self._loop_side = loop_side
        self._naming = naming
        self._settings = settings
        self._stats = stats
        self._client_factory = client_factory
        self._jobs: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._threads = Threads()
        self._stopping = self._threads.stopping
        self._hand = LoopHand()
        self._stream: Any = None
        self._fingerprints: dict[str, tuple[Any, ...]] = {}
        self._known: dict[str, Built] = {}
        self._resync_lock = threading.Lock()
        self._resync_queued = False
        # Container id -> the ticket and future of its inspection on the way.
        self._pending: dict[str, tuple[int, Future[Any]]] = {}
        self._ticket = 0
        self._changes: dict[str, Built | None] = {}  # not yet handed to the loop

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._hand.bind(loop)
        self._threads.start(self._read_events, "docker-events")
        self._threads.start(self._work, "docker-worker")

    def stop(self) -> None:
        self._threads.stop()
        self._jobs.put(("stop", None))
        self.close_stream()

    def join(self, timeout_s: float) -> None:
        self._threads.join(timeout_s)

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
            self.queue_resync()  # subscribed first, now list: nothing falls in between
            try:
                for event in self._stream:
                    self._jobs.put(("event", event))
            except Exception as exc:
                logger.debug("docker event stream failed: %r", exc)
            finally:
                self.close_stream()
                with contextlib.suppress(Exception):
                    client.close()
            if not self._stopping.is_set():
                self._lost("event stream ended")
                self._stats.docker_reconnects += 1
                self._stopping.wait(backoff.next())

    def close_stream(self) -> None:
        with self._resync_lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()

    def queue_resync(self) -> None:
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
                        self.close_stream()  # a hung stream (frozen daemon) reconnects too
                    else:
                        logger.debug("docker %s %s not handled: %r", kind, payload, exc)
                if self._changes and (len(self._changes) >= HAND_BATCH or self._jobs.empty()):
                    self._hand(self._loop_side.apply_changes, self._changes)
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
            self._hand(self._loop_side.apply_changes, self._changes)
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
            self._hand(self._loop_side.apply_quick, quick, took_s, applied)
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
        self._hand(self._loop_side.apply_all, owners, time.monotonic() - started)

    def _try_inspect(self, client: Any, container_id: str) -> Built | Exception | None:
        try:
            return self._inspect(client, container_id)
        except Exception as exc:
            return exc

    def _lost(self, reason: str) -> None:
        self._hand(self._loop_side.set_down, reason)
