"""The heap settler: past its count of changes, one young collection and a freeze."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from dnsd.heap import Settler


@pytest.fixture(autouse=True)
def _unfreeze() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_settles_once_past_the_count() -> None:
    settler = Settler(every=100)
    settler.changed(60)
    assert settler.settled == 0 and gc.get_freeze_count() == 0
    kept = [object() for _ in range(10)]  # something alive to freeze
    settler.changed(60)
    assert settler.settled == 1 and gc.get_freeze_count() > 0
    settler.changed(60)
    assert settler.settled == 1  # counting starts again after a settle
    del kept
