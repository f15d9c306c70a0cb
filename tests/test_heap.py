"""The heap settler: past its count of changes, one young collection and a freeze."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from dnsd.heap import Settler, settle_after_start


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


def test_the_heap_is_frozen_once_the_first_loads_are_in() -> None:
    """Everything alive at start (imported modules, the first load) leaves the collector's
    view once the sources have loaded, so no later full collection walks it again."""
    loaded = [False]
    kept = [[object()] for _ in range(100)]  # tracked containers alive at start

    async def scenario() -> tuple[int, int]:
        settling = asyncio.create_task(settle_after_start(lambda: loaded[0], poll_s=0.01))
        await asyncio.sleep(0.05)
        before = gc.get_freeze_count()  # still waiting for the first loads
        loaded[0] = True
        await asyncio.wait_for(settling, 5)
        return before, gc.get_freeze_count()

    before, after = asyncio.run(scenario())
    assert before == 0 and after >= len(kept)
