"""Loading a whole prefix into an etcd ``Mirror`` at once, as a first list does (unit tests
and benchmarks; the source itself lists in pages through ``relist_changes``)."""

from __future__ import annotations

from collections.abc import Iterable

from dnsd.sources.etcd_mirror import Change, Mirror


def load_all(mirror: Mirror, entries: Iterable[Change]) -> int:
    """Make ``mirror`` hold exactly ``entries`` (keys not in them are deleted); how many
    keys it serves then."""
    mirror.apply(mirror.relist_changes(entries))
    return len(mirror.services)
