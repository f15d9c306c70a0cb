"""The sources' shared lifecycle: health vocabulary, backoff, threads, the loop hand."""

from __future__ import annotations

import asyncio
import threading

import pytest

from dnsd.sources.lifecycle import (
    DEGRADED,
    DOWN,
    OK,
    Backoff,
    LoopHand,
    SourceHealth,
    Threads,
)


@pytest.mark.parametrize(
    ("connected", "synced", "state"),
    [(True, True, OK), (True, False, OK), (False, True, DEGRADED), (False, False, DOWN)],
)
def test_health_of(connected: bool, synced: bool, state: str) -> None:
    health = SourceHealth.of(connected, "etcd unreachable", synced, revision=7)
    assert health.state == state
    assert health.reason == ("" if connected else "etcd unreachable")
    assert health.detail == {"revision": 7}


def test_backoff_doubles_to_its_ceiling_and_resets() -> None:
    backoff = Backoff(0.2, 1.0)
    assert [backoff.next() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next() == 0.2


def test_threads_stop_through_one_event_and_are_joined() -> None:
    threads = Threads()
    finished: list[str] = []

    def worker(name: str) -> None:
        threads.stopping.wait(10)
        finished.append(name)

    for name in ("a", "b"):
        threads.start(lambda n=name: worker(n), name)
    threads.stop()
    threads.join(5.0)  # without the stop they would wait 10 s: finished proves the event
    assert sorted(finished) == ["a", "b"]
    assert not any(thread.is_alive() for thread in threads._threads)


def test_threads_join_gives_up_on_a_stuck_thread() -> None:
    threads, release = Threads(), threading.Event()
    threads.start(lambda: release.wait(5), "stuck")
    threads.join(0.1)  # bounded: a thread stuck in I/O is left behind
    assert [thread.is_alive() for thread in threads._threads] == [True]  # join returned
    release.set()


def test_loop_hand_runs_on_the_loop_and_drops_after_close() -> None:
    loop = asyncio.new_event_loop()
    hand, seen = LoopHand(), []
    hand(seen.append, "before bind")  # not bound yet: dropped
    hand.bind(loop)
    thread = threading.Thread(target=lambda: hand(lambda: seen.append(threading.get_ident())))
    thread.start()
    thread.join()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert seen == [threading.get_ident()]  # ran on the loop's thread, not the caller's
    loop.close()
    hand(seen.append, "after close")  # no error, nothing done
    assert len(seen) == 1
