"""The miss queue is shared fairly between clients."""

from __future__ import annotations

from dnsd.wire.fair_queue import TOO_MANY, TOO_MANY_FROM_ONE, FairQueue


def test_clients_take_turns_and_one_client_is_held_to_its_share() -> None:
    queue = FairQueue(limit=10, per_client=4)
    for i in range(6):
        refused = queue.put(b"a%d" % i, ("10.0.0.1", 1))
        assert refused == (None if i < 4 else TOO_MANY_FROM_ONE)
    queue.put(b"b0", ("10.0.0.2", 1))
    queue.put(b"b1", ("10.0.0.2", 1))
    order = []
    while (item := queue.take()) is not None:
        order.append(item[0])
    assert order == [b"a0", b"b0", b"a1", b"b1", b"a2", b"a3"]
    assert len(queue) == 0
    for i in range(10):
        assert queue.put(b"x", (f"10.0.1.{i}", 1)) is None
    assert queue.put(b"x", ("10.0.2.1", 1)) == TOO_MANY


def test_one_address_is_held_to_its_misses_per_second() -> None:
    from dnsd.wire import miss_rate
    from dnsd.wire.miss_rate import MissRate

    rate = MissRate(3)
    assert [rate.allows("10.0.0.1", 5.0 + i / 10) for i in range(5)] == [1, 1, 1, 0, 0]
    assert rate.allows("10.0.0.2", 5.9)  # another address has its own count
    assert rate.allows("10.0.0.1", 6.0)  # a new second, a fresh count
    assert all(MissRate(0).allows("10.0.0.1", 1.0) for _ in range(10_000))  # 0: no limit
    full = MissRate(1)
    for i in range(miss_rate.MAX_COUNTED):
        full.allows(f"a{i}", 1.0)
    # Past the bound a new address goes uncounted (the table never grows without end).
    assert full.allows("new", 1.0) and full.allows("new", 1.0)
    assert not full.allows("a0", 1.0)
