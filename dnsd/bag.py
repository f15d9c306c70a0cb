"""Bags: a table whose key holds one item, or several each with how many times it was added
(most keys of the record store's indexes hold one item: no dict for them); and counters that
drop a key at zero."""

from __future__ import annotations

from typing import Any, TypeVar

from dnsd.record import Record

Item = TypeVar("Item", Record, str)
# key -> its one item, or each item with how many times it was added.  Most keys hold one
# item (a name's one record of a type, an address's one name): no dict for them.
Bag = dict[Any, "Item | dict[Item, int]"]


def bag_add(table: Bag[Item], key: Any, item: Item) -> None:
    found = table.get(key)
    if found is None:
        table[key] = item
        return
    if not isinstance(found, dict):
        found = table[key] = {found: 1}
    found[item] = found.get(item, 0) + 1


def bag_remove(table: Bag[Item], key: Any, item: Item) -> None:
    found = table[key]
    if not isinstance(found, dict):
        del table[key]
        return
    count = found.pop(item)
    if count > 1:
        found[item] = count - 1
    elif len(found) == 1:
        ((last, left),) = found.items()
        if left == 1:
            table[key] = last


def bag_items(found: Item | dict[Item, int] | None) -> list[Item]:
    if found is None:
        return []
    return list(found) if isinstance(found, dict) else [found]


def count_up(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


def count_down(counter: dict[str, int], key: str) -> None:
    left = counter[key] - 1
    if left:
        counter[key] = left
    else:
        del counter[key]
