"""dnsd.slices: long work on the event loop yields to it within its budget."""

from __future__ import annotations

import asyncio

from dnsd.slices import CHECK_EVERY, in_slices


def test_in_slices_yields_to_the_loop_once_the_budget_is_spent() -> None:
    now = [0.0]

    def clock() -> float:
        return now[0]

    async def run() -> tuple[list[int], int]:
        turns = 0
        stop = False

        async def other_work() -> None:
            nonlocal turns
            while not stop:
                turns += 1
                await asyncio.sleep(0)

        other = asyncio.create_task(other_work())
        await asyncio.sleep(0)
        seen = []
        started = turns
        async for item in in_slices(range(10 * CHECK_EVERY), budget_s=1.0, clock=clock):
            seen.append(item)
            now[0] += 0.1  # ten items spend the budget; the clock is read every CHECK_EVERY
        stop = True
        await other
        return seen, turns - started

    seen, turns = asyncio.run(run())
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
