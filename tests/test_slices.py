"""dnsd.slices: long work on the event loop yields to it within its budget."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from dnsd.slices import CHECK_EVERY, in_slices

T = TypeVar("T")


async def with_turns_between(work: Awaitable[T]) -> tuple[T, int]:
    """``work``'s result, and how many turns another task got on the loop meanwhile."""
    turns = 0
    stop = False

    async def other_work() -> None:
        nonlocal turns
        while not stop:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    started = turns
    result = await work
    stop = True
    await other
    return result, turns - started


def test_in_slices_yields_to_the_loop_once_the_budget_is_spent() -> None:
    now = [0.0]

    def clock() -> float:
        return now[0]

    async def collect() -> list[int]:
        seen = []
        async for item in in_slices(range(10 * CHECK_EVERY), budget_s=1.0, clock=clock):
            seen.append(item)
            now[0] += 0.1  # ten items spend the budget; the clock is read every CHECK_EVERY
        return seen

    seen, turns = asyncio.run(with_turns_between(collect()))
    assert seen == list(range(10 * CHECK_EVERY))
    assert turns >= 9  # the other task ran between slices, not only at the end


def test_in_slices_does_not_yield_within_the_budget() -> None:
    async def run() -> int:
        turns = 0

        async def other_work() -> None:
            nonlocal turns
            turns += 1

        async for _ in in_slices(range(1000), budget_s=60.0):
            if turns == 0:
                asyncio.get_running_loop().create_task(other_work())
                turns = -1
        return turns

    assert asyncio.run(run()) == -1  # the scheduled task never got a turn meanwhile


def test_steps_pause_with_a_partial_publish_and_end_with_the_same_store() -> None:
    """A big ``replace_source`` run in slices: the loop serves between slices, listeners hear
    of each part before a pause, and the store ends exactly as one synchronous call leaves it
    (the static zone's precedence over another source included)."""
    from dnsd.admission import Admission
    from dnsd.record import Record
    from dnsd.records import STATIC, RecordStore
    from dnsd.slices import drive, run_in_slices

    def records(count: int, last: int) -> list[Record]:
        return [Record(f"n{i}.docker.", "A", f"10.0.{i % 250}.{last}", 5) for i in range(count)]

    def store() -> RecordStore:
        made = RecordStore(Admission(["docker."]))
        made.replace_source(STATIC, {"hosts": records(3000, 1) + records(10, 9)})
        made.replace_owner("docker", "c1", [Record("n5000.docker.", "A", "10.1.1.1", 5)])
        return made

    wanted = {"hosts": [*records(2000, 2), Record("n5000.docker.", "A", "10.2.2.2", 5)]}
    synchronous = store()
    assert drive(synchronous.replace_source_steps(STATIC, wanted))
    sliced = store()
    published: list[int] = []
    sliced.subscribe(lambda names: published.append(len(names)))
    now = [0.0]

    def clock() -> float:
        now[0] += 0.001
        return now[0]

    steps = sliced.replace_source_steps(STATIC, wanted)
    sliced_run = run_in_slices(steps, sliced.publish_partial, budget_s=0.0025, clock=clock)
    changed, turns = asyncio.run(with_turns_between(sliced_run))
    assert changed and turns > 10 and len(published) > 10
    assert sorted(sliced.owned(), key=repr) == sorted(synchronous.owned(), key=repr)
    assert sorted(sliced.rejected(), key=repr) == sorted(synchronous.rejected(), key=repr)
    for name in ("n0.docker.", "n2500.docker.", "n5000.docker."):
        assert sliced.lookup(name, "A") == synchronous.lookup(name, "A")
    # The static zone took n5000 from the docker container in both.
    assert [r.value for r in sliced.lookup("n5000.docker.", "A")] == ["10.2.2.2"]
