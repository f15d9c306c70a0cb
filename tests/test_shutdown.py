"""dnsd.shutdown: SIGTERM asks for an orderly stop and forces the exit at the deadline."""

from __future__ import annotations

import threading

from dnsd.shutdown import ShutdownGuard


def test_the_guard_asks_to_stop_then_forces_the_exit_after_the_deadline() -> None:
    stops: list[int] = []
    exited = threading.Event()
    codes: list[int] = []

    def exit_now(code: int) -> None:
        codes.append(code)
        exited.set()

    guard = ShutdownGuard(0.05, lambda: stops.append(1), exit_now)
    guard.arm("SIGTERM")
    guard.arm("SIGTERM")  # a second signal asks again, one deadline only
    assert stops == [1, 1]
    assert exited.wait(2)
    assert codes == [0]


def test_the_guard_does_nothing_until_armed() -> None:
    exited = threading.Event()
    ShutdownGuard(0.01, lambda: None, lambda code: exited.set())
    assert not exited.wait(0.1)
