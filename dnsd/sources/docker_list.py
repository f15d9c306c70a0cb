"""A container as ``/containers/json`` shows it: what its records depend on (to tell whether
an inspection is needed), and an inspect-shaped document of what the list carries (to serve
a burst before it is inspected).  Pure functions, no I/O."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

_HEALTH = re.compile(r"\((healthy|unhealthy|health: starting)\)")


def list_fingerprint(entry: dict[str, Any]) -> tuple[Any, ...]:
    """What /containers/json shows of a container: if it is unchanged, so are its records
    (changes it cannot show, like aliases, come with events that re-inspect)."""
    networks = (entry.get("NetworkSettings") or {}).get("Networks") or {}
    health = _HEALTH.search(str(entry.get("Status", "")))
    return (
        tuple(entry.get("Names") or ()),
        entry.get("State"),
        health.group(1) if health else None,
        tuple(sorted((entry.get("Labels") or {}).items())),
        tuple(
            sorted(
                (net, s.get("EndpointID"), s.get("IPAddress"), s.get("GlobalIPv6Address"))
                for net, s in networks.items()
                if s
            )
        ),
    )


def attrs_from_list(entry: dict[str, Any]) -> dict[str, Any]:
    """An inspect-shaped document from a /containers/json entry, with what the list carries:
    names, labels, state and health, networks and addresses, exposed and published ports,
    creation time.  It lacks the hostname (left unset) and, on some Engines, network aliases:
    an inspect fills those in later."""
    cid = str(entry.get("Id", ""))
    state = str(entry.get("State", ""))
    health = _HEALTH.search(str(entry.get("Status", "")))
    exposed: dict[str, Any] = {}
    published: dict[str, Any] = {}
    for port in entry.get("Ports") or []:
        key = f"{port.get('PrivatePort')}/{port.get('Type') or 'tcp'}"
        exposed[key] = {}
        if port.get("PublicPort"):
            binding = {"HostIp": port.get("IP", ""), "HostPort": str(port["PublicPort"])}
            published.setdefault(key, []).append(binding)
        else:
            published.setdefault(key, None)
    created = entry.get("Created")
    names = entry.get("Names") or [""]
    return {
        "Id": cid,
        "Name": names[0],
        "Created": (
            datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.000000000Z")
            if isinstance(created, int | float)
            else ""
        ),
        "Config": {"Hostname": cid[:12], "Labels": entry.get("Labels") or {},
                   "ExposedPorts": exposed, "Image": entry.get("Image") or ""},
        "State": {
            "Running": state in ("running", "paused"),
            "Paused": state == "paused",
            "Health": {"Status": health.group(1).replace("health: ", "")} if health else None,
        },
        "NetworkSettings": {
            "Networks": (entry.get("NetworkSettings") or {}).get("Networks") or {},
            "Ports": published,
        },
    }  # fmt: skip
