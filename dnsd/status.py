"""What the HTTP endpoint reports: readiness per source and the name table.

Reads the daemon's parts (store, sources, listeners) on the event loop; writes nothing.
"""

from __future__ import annotations

import fnmatch
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
    if isinstance(value, SrvValue | MxValue):
        return " ".join(str(part) for part in value)
    if isinstance(value, tuple):
        return list(value)
    return value


def records(daemon: Daemon, pattern: str = "", source: str = "") -> list[dict[str, Any]]:
    """Every record with its source; docker records also carry container and health."""
    node = daemon.config.etcd.node_id
    built = daemon.docker.built if daemon.docker is not None else {}
    rows = []
    for owned in daemon.store.owned():
        record = owned.record
        if source and owned.source != source:
            continue
        if (
            pattern
            and not fnmatch.fnmatch(record.name, pattern.lower())
            and not fnmatch.fnmatch(record.name.rstrip("."), pattern.lower())
        ):
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
        }
        box = built.get(owned.owner) if owned.source == "docker" else None
        if box is not None:
            row["container"] = box.name
            row["health"] = box.health or "none"
        rows.append(row)
    rows.sort(key=lambda r: (r["name"], r["type"], str(r["value"])))
    return rows
