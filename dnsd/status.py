"""What the HTTP endpoint reports: readiness per source and the name table.

Reads a ``StatusView`` (the daemon is one) on the event loop; writes nothing.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from dnsd.record import MxValue, SrvValue, Value
from dnsd.records import RecordStore
from dnsd.sources.lifecycle import DOWN, OK, Source


class Containers(Protocol):
    """What the name table shows of the containers (the Docker source)."""

    def unserved(self) -> Iterator[tuple[str, str, Value | None, str, str]]:
        """(name, type, value, container id, reason) for names lost and containers withheld."""
        ...

    def container(self, container_id: str) -> tuple[str, str] | None:
        """(container name, health) of a served container."""
        ...


class Cluster(Protocol):
    """What the name table shows of the etcd mirror."""

    def node_of(self, owner: str) -> str | None:
        """The node that published the etcd key ``owner``, if dnsd did."""
        ...

    def nodes(self) -> list[dict[str, Any]]:
        """The publishing nodes with their key counts and lease time left."""
        ...

    def unserved(self) -> Iterator[tuple[str, str, str]]:
        """(name, key, reason) for keys skipped as unservable."""
        ...


class StatusView(Protocol):
    @property
    def store(self) -> RecordStore: ...

    @property
    def sources(self) -> Sequence[Source]: ...

    @property
    def listening(self) -> bool: ...

    @property
    def node_id(self) -> str: ...

    @property
    def zones(self) -> Sequence[str]: ...

    @property
    def containers(self) -> Containers | None: ...

    @property
    def cluster(self) -> Cluster | None: ...

    @property
    def upstreams(self) -> dict[str, bool]:
        """Every upstream -> healthy (empty without forwarding)."""
        ...


def readiness(view: StatusView) -> tuple[bool, dict[str, Any]]:
    """Ready when listening and no source is down (never synced); a source that is degraded
    (synced once, serving what it had) or absent (optional, not there) does not hold it back."""
    sources: dict[str, Any] = {}
    for source in view.sources:
        health = source.health()
        entry: dict[str, Any] = {"status": health.state}
        if health.state != OK:
            entry["reason"] = health.reason
        entry.update(health.detail)
        sources[source.name] = entry
    listening = view.listening
    ready = listening and all(s["status"] != DOWN for s in sources.values())
    upstreams = {to: "up" if up else "down" for to, up in view.upstreams.items()}
    details = {"ready": ready, "listening": listening, "sources": sources}
    if upstreams:  # a down upstream does not hold readiness back: local names still answer
        details["upstreams"] = upstreams
    return ready, details


def _value(value: Any) -> Any:
    if isinstance(value, SrvValue):
        return f"{value.priority} {value.weight} {value.port} {value.target}"
    if isinstance(value, MxValue):
        return f"{value.preference} {value.exchange}"
    if isinstance(value, tuple):
        return list(value)
    return value


def _matches(name: str, pattern: str, zones: Sequence[str] = ()) -> bool:
    """Whether ``pattern`` (a glob, any case) fits the name: written in full, without the final
    dot, or within its zone (``web`` for ``web.docker.``)."""
    if not pattern:
        return True
    pattern = pattern.lower()
    within = [name[: -len(zone) - 1] for zone in zones if name.endswith("." + zone)]
    return any(
        fnmatch.fnmatch(candidate, pattern) for candidate in (name, name.rstrip("."), *within)
    )


def _not_served(view: StatusView) -> Iterator[tuple[str, str, Any, str, str, str]]:
    """(name, type, value, source, owner, reason) for everything offered but not served:
    records the store refused, names lost to another container, withheld containers."""
    for refused in view.store.rejected():
        record = refused.record
        yield record.name, record.rtype, record.value, refused.source, refused.owner, refused.reason
    if view.containers is not None:
        for name, rtype, value, container_id, why in view.containers.unserved():
            yield name, rtype, value, "docker", container_id, why
    if view.cluster is not None:
        for name, key, why in view.cluster.unserved():
            yield name, "-", None, "etcd", key, why


def _node(view: StatusView, origin: str, owner: str) -> str | None:
    """The node a record comes from: this one for its own sources, the publishing node for
    dnsd's etcd keys."""
    if origin in ("docker", "static"):
        return view.node_id
    if origin == "etcd" and view.cluster is not None:
        return view.cluster.node_of(owner)
    return None


def _container(view: StatusView, origin: str, owner: str) -> tuple[str, str] | None:
    if origin != "docker" or view.containers is None:
        return None
    return view.containers.container(owner)


def sort_key(row: dict[str, Any]) -> tuple[str, str, str]:
    """The name table's order: by name, type, value."""
    return row["name"], row["type"], str(row["value"])


def rows(view: StatusView, pattern: str = "", source: str = "") -> Iterator[dict[str, Any]]:
    """The name table's rows, unsorted (``sort_key`` orders them): every record with its
    source; docker records also carry container and health.  Rows with ``served: false``
    say what was offered but is not answered, and why.  Reads snapshots of the store and
    the sources, so a consumer may pause between rows (``dnsd.slices``) while they change."""
    for name, rtype, value, origin, owner, why in _not_served(view):
        if (source and origin != source) or not _matches(name, pattern, view.zones):
            continue
        box = _container(view, origin, owner)
        yield {
            "name": name, "type": rtype, "value": _value(value), "ttl": None, "source": origin,
            "owner": owner, "node": _node(view, origin, owner),
            "container": box[0] if box is not None else None,
            "health": box[1] if box is not None else None,
            "served": False, "reason": why,
        }  # fmt: skip
    for owned in view.store.owned():
        record = owned.record
        if source and owned.source != source:
            continue
        if not _matches(record.name, pattern, view.zones):
            continue
        box = _container(view, owned.source, owned.owner)
        yield {
            "name": record.name,
            "type": record.rtype,
            "value": _value(record.value),
            "ttl": record.ttl,
            "source": owned.source,
            "owner": owned.owner,
            "node": _node(view, owned.source, owned.owner),
            "container": box[0] if box is not None else None,
            "health": box[1] if box is not None else None,
            "served": True,
        }


def records(view: StatusView, pattern: str = "", source: str = "") -> list[dict[str, Any]]:
    """``rows`` sorted, in one go (the HTTP endpoint builds them in slices instead)."""
    return sorted(rows(view, pattern, source), key=sort_key)
