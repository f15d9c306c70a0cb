"""What the HTTP endpoint reports: readiness per source and the name table.

Reads the daemon's parts (store, sources, listeners) on the event loop; writes nothing.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from dnsd.records import MxValue, SrvValue

if TYPE_CHECKING:
    from dnsd.daemon import Daemon


def _source(state: str, reason: str, synced: bool) -> dict[str, Any]:
    """ok; degraded (synced once, serving what it had); down (never synced)."""
    if state == "ok":
        return {"status": "ok"}
    return {"status": "degraded" if synced else "down", "reason": reason}


def readiness(daemon: Daemon) -> tuple[bool, dict[str, Any]]:
    sources: dict[str, Any] = {"static": {"status": "ok", "records": daemon.store.count("static")}}
    if daemon.docker is not None:
        docker = daemon.docker
        sources["docker"] = _source(docker.state, docker.reason, docker.synced_at is not None)
        if sources["docker"]["status"] == "down" and docker.optional:
            # On by default but not there (no socket): watched for, not a failure.
            sources["docker"]["status"] = "absent"
    if daemon.etcd is not None:
        etcd = daemon.etcd
        sources["etcd"] = _source(etcd.state, etcd.reason, etcd.revision > 0)
        sources["etcd"]["revision"] = etcd.revision
    if daemon.publisher is not None:
        publisher = daemon.publisher
        sources["etcd-publish"] = _source(publisher.state, publisher.reason, publisher.synced)
    listening = bool(daemon.udp) and bool(daemon.tcp)
    ready = listening and all(s["status"] != "down" for s in sources.values())
    return ready, {"ready": ready, "listening": listening, "sources": sources}


def _value(value: Any) -> Any:
    if isinstance(value, SrvValue):
        return f"{value.priority} {value.weight} {value.port} {value.target}"
    if isinstance(value, MxValue):
        return f"{value.preference} {value.exchange}"
    if isinstance(value, tuple):
        return list(value)
    return value


def _matches(name: str, pattern: str) -> bool:
    return not pattern or any(
        fnmatch.fnmatch(candidate, pattern.lower()) for candidate in (name, name.rstrip("."))
    )


def _not_served(daemon: Daemon) -> Iterator[tuple[str, str, Any, str, str, str]]:
    """(name, type, value, source, owner, reason) for everything offered but not served:
    records the store refused, names lost to another container, withheld containers."""
    for refused in daemon.store.rejected():
        record = refused.record
        yield record.name, record.rtype, record.value, refused.source, refused.owner, refused.reason
    built = daemon.docker.built if daemon.docker is not None else {}
    zone = daemon.config.docker.zone
    for container_id, box in built.items():
        for record in box.records:
            holders = box.conflicts.get(record.name)
            if holders is not None:
                why = f"name held by container {holders}"
                yield record.name, record.rtype, record.value, "docker", container_id, why
        if box.withheld:
            name = f"{box.name}.{zone}" if box.name else "-"
            yield name, "-", None, "docker", container_id, f"withheld: {box.withheld}"


def records(daemon: Daemon, pattern: str = "", source: str = "") -> list[dict[str, Any]]:
    """Every record with its source; docker records also carry container and health.  Rows
    with ``served: false`` say what was offered but is not answered, and why."""
    node = daemon.config.etcd.node_id
    built = daemon.docker.built if daemon.docker is not None else {}
    rows = []
    for name, rtype, value, origin, owner, why in _not_served(daemon):
        if (source and origin != source) or not _matches(name, pattern):
            continue
        box = built.get(owner) if origin == "docker" else None
        rows.append({
            "name": name, "type": rtype, "value": _value(value), "ttl": None, "source": origin,
            "owner": owner, "node": node if origin in ("docker", "static") else None,
            "container": box.name if box is not None else None,
            "health": (box.health or "none") if box is not None else None,
            "served": False, "reason": why,
        })  # fmt: skip
    for owned in daemon.store.owned():
        record = owned.record
        if source and owned.source != source:
            continue
        if not _matches(record.name, pattern):
            continue
        row: dict[str, Any] = {
            "name": record.name,
            "type": record.rtype,
            "value": _value(record.value),
            "ttl": record.ttl,
            "source": owned.source,
            "owner": owned.owner,
            "node": node if owned.source in ("docker", "static") else None,
            "container": None,
            "health": None,
            "served": True,
        }
        box = built.get(owned.owner) if owned.source == "docker" else None
        if box is not None:
            row["container"] = box.name
            row["health"] = box.health or "none"
        rows.append(row)
    rows.sort(key=lambda r: (r["name"], r["type"], str(r["value"])))
    return rows
