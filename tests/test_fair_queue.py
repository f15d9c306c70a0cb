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
