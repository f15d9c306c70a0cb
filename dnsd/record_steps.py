"""The record store's work on one owner's records, whole or in steps of ``STEP`` records (a
change too big for one go pauses between steps: ``dnsd.slices``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from dnsd.record import Record
from dnsd.slices import Steps

V = TypeVar("V")

Key = tuple[str, str]  # (source, owner)
Records = tuple[Record, ...]
# Records handled between two points where a long change may pause (``replace_source_steps``).
STEP = 128


def unique(records: list[Record] | tuple[Record, ...]) -> Records:
    """The records in their order, each once."""
    return tuple(records) if len(records) < 2 else tuple(dict.fromkeys(records))


def unique_steps(records: Iterable[Record]) -> Steps[Records]:
    """``unique`` in steps, for any iterable."""
    items = records if isinstance(records, (list, tuple)) else list(records)
    if len(items) <= STEP:
        return unique(items)
    seen: dict[Record, None] = {}
    for start in range(0, len(items), STEP):
        seen.update(dict.fromkeys(items[start : start + STEP]))
        yield
    return tuple(seen)


def equal_steps(old: Records, new: Records) -> Steps[bool]:
    if old is new:
        return True
    if len(old) != len(new):
        return False
    for start in range(0, len(old), STEP):
        if old[start : start + STEP] != new[start : start + STEP]:
            return False
        yield
    return True


def keep(table: dict[Key, V], key: Key, value: V) -> None:
    """``table[key] = value``, or no entry at all when ``value`` is empty."""
    if value:
        table[key] = value
    else:
        table.pop(key, None)


def set_steps(records: Records) -> Steps[set[Record]]:
    found: set[Record] = set()
    for start in range(0, len(records), STEP):
        found.update(records[start : start + STEP])
        yield
    return found
