"""The miss queue is shared fairly between clients."""

from __future__ import annotations

import dns.flags
import dns.message

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
    assert all(MissRate(0, 0, 0).allows("10.0.0.1", 1.0) for _ in range(10_000))  # no limit
    full = MissRate(1, 0, 0)
    for i in range(miss_rate.MAX_COUNTED):
        full.allows(f"a{i}", 1.0)
    # Past the bound a new address goes uncounted (the table never grows without end).
    assert full.allows("new", 1.0) and full.allows("new", 1.0)
    assert not full.allows("a0", 1.0)


def test_a_network_is_held_to_its_share_and_the_heaviest_are_shed_first() -> None:
    from dnsd.wire.miss_rate import (
        OVER_TOTAL,
        TOO_MANY_FROM_NETWORK,
        TOO_MANY_MISSES,
        MissRate,
        network_of,
    )

    assert network_of("10.1.2.3") == network_of("10.1.2.200") != network_of("10.1.3.1")
    assert network_of("::ffff:10.1.2.3") == network_of("::ffff:10.1.2.9")
    assert network_of("2001:db8:0:12::1") == network_of("2001:db8:0:ff::2")  # one /56
    assert network_of("2001:db8:0:100::1") != network_of("2001:db8:0:ff::2")
    rate = MissRate(per_client=5, per_prefix=20, total=0)
    verdicts = [rate.over(f"10.0.0.{i % 10}", 1.0) for i in range(30)]  # 10 addresses
    assert verdicts[:20] == [None] * 20 and set(verdicts[20:]) == {TOO_MANY_FROM_NETWORK}
    assert rate.over("10.0.1.1", 1.0) is None  # another network has its own share
    assert [rate.over("10.0.1.1", 1.0) for _ in range(5)][-1] == TOO_MANY_MISSES
    # Past the total, a network at or above an equal share waits; lighter ones still pass.
    shed = MissRate(per_client=0, per_prefix=0, total=100)
    assert all(shed.over(f"10.9.9.{i % 200}", 2.0) is None for i in range(99))
    assert shed.over("10.8.0.1", 2.0) is None  # the 100th, from a second network
    assert shed.over("10.9.9.1", 2.0) == OVER_TOTAL  # the heavy network: 99 of 2 networks
    assert shed.over("10.8.0.2", 2.0) is None  # the light one: 1, below 100 / 2
    assert shed.over("10.9.9.1", 3.0) is None  # a new second


def test_an_over_limit_question_gets_tc_from_its_own_bytes() -> None:
    from dnsd.wire.codec import slip

    query = dns.message.make_query("WeB.docker", "A", use_edns=0)
    query.id = 0x1234
    reply = dns.message.from_wire(slip(query.to_wire()) or b"")
    assert reply.id == 0x1234 and reply.flags & dns.flags.TC and reply.flags & dns.flags.QR
    assert reply.flags & dns.flags.RD and str(reply.question[0].name) == "WeB.docker."
    assert not reply.answer and reply.rcode() == 0
    assert slip(b"\x12") is None and slip(b"\x00" * 2 + b"\x80" + b"\x00" * 9) is None
