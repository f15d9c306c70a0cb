"""Name ownership among containers: which container may answer for each Docker name.

A container's *own* names (its name, ``<name>.<network>``, SRV names under its name) are unique
on a Docker host and always its own.  Its *extra* names (hostname, ``dnsd.name``,
``dnsd.service``, compose ``service.project``, network aliases) may not take a name that another
container already owns: the oldest claimant keeps it, together with every claimant of the same
group, so replicas share their names and a stranger cannot join them.  A service name (compose
``service.project``, ``dnsd.service``) and the names below it are claimed as members of that
service: every member shares it, whatever other service it is in too (as on several hosts,
where each host serves its own members and etcd joins them); other extra names are claimed
as members of the container's group (``dnsd.service``, else the compose service).  An own
name beats any extra name.  The rule depends only on
who claims what (creation time, then id), never on the order events arrive, so a resync gives
the same answer.  When an owner leaves, the next claimant takes the name over.

Pure bookkeeping, no I/O; the Docker source asks it which records of a container to serve.
(Names held by the static zone are refused by the record store itself.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dnsd.names import in_zone
from dnsd.record import Record
from dnsd.sources.docker_names import Built


@dataclass(frozen=True, slots=True)
class Claim:
    own: bool  # the container's own name (beats every extra name)
    group: str  # dnsd.service, else compose service.project, else ""
    created: str  # the container's creation time (ISO 8601 sorts as text)


def claims_of(built: Built) -> dict[str, Claim]:
    """The names a served container claims (none when it is withheld)."""
    if built.withheld:
        return {}
    own = Claim(True, built.group, built.created)
    extra = Claim(False, built.group, built.created)
    members = {service: Claim(False, service, built.created) for service in built.service_names}
    claims: dict[str, Claim] = {}
    for record in built.records:
        name = record.name
        if name in claims:
            continue
        if name in built.own_names:
            claims[name] = own
            continue
        services = [s for s in built.service_names if in_zone(name, s)]
        claims[name] = members[max(services, key=len)] if services else extra
    return claims


class NameClaims:
    def __init__(self) -> None:
        self._claims: dict[str, dict[str, Claim]] = {}  # name -> container id -> claim
        self._names: dict[str, frozenset[str]] = {}  # container id -> names it claims
        self._winners: dict[str, frozenset[str]] = {}  # name -> who holds it (memo)

    def claim(self, container_id: str, claims: dict[str, Claim]) -> set[str]:
        """Set a container's claims (empty: it is gone); returns the names whose claimants
        changed (their winners may have changed)."""
        old = self._names.get(container_id, frozenset())
        new = frozenset(claims)
        changed = set(old ^ new)
        for name in old - new:
            holders = self._claims[name]
            del holders[container_id]
            if not holders:
                del self._claims[name]
        for name, claim in claims.items():
            holders = self._claims.setdefault(name, {})
            if holders.get(container_id) != claim:
                holders[container_id] = claim
                changed.add(name)
        if new:
            self._names[container_id] = new
        else:
            self._names.pop(container_id, None)
        for name in changed:
            self._winners.pop(name, None)
        return changed

    def claimants(self, names: Iterable[str]) -> set[str]:
        return {cid for name in names for cid in self._claims.get(name, {})}

    def winners(self, name: str) -> frozenset[str]:
        known = self._winners.get(name)
        if known is None:
            known = self._winners[name] = self._decide(name)
        return known

    def _decide(self, name: str) -> frozenset[str]:
        holders = self._claims.get(name, {})
        if len(holders) <= 1:
            return frozenset(holders)
        own = frozenset(cid for cid, claim in holders.items() if claim.own)
        if own:
            return own
        first = min(holders, key=lambda cid: (holders[cid].created, cid))
        group = holders[first].group
        if not group:
            return frozenset((first,))
        return frozenset(cid for cid, claim in holders.items() if claim.group == group)

    def served(
        self, container_id: str, records: Iterable[Record]
    ) -> tuple[list[Record], dict[str, str]]:
        """The records ``container_id`` may serve, and for each name it may not: who holds it."""
        kept: list[Record] = []
        lost: dict[str, str] = {}
        verdicts: dict[str, bool] = {}
        for record in records:
            name = record.name
            if name not in verdicts:
                winners = self.winners(name)
                verdicts[name] = container_id in winners
                if not verdicts[name]:
                    lost[name] = ",".join(sorted(winners))
            if verdicts[name]:
                kept.append(record)
        return kept, lost
