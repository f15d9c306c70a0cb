"""State shared between the UDP listener threads, the source threads and the event loop: counts
bumped on several threads lose nothing, and memos written from several threads stay whole.

The GIL is made to switch threads as often as it can (``sys.setswitchinterval(1e-6)``), so an
increment split between a read and a write by another thread would show here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import dns.message
import dns.query
from conftest import DnsdFactory, free_port, query

from dnsd.resolve.acl import Acl
from dnsd.stats import Stats
from dnsd.wire.answer_cache import AnswerCache
from dnsd.wire.screen import screened

THREADS = 8
EACH = 5_000


def _on_threads(work: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_packets_screened_on_several_threads_are_all_counted(switching_often: None) -> None:
    stats = Stats()
    bad_header = b"\x00\x01\x00"  # too short: dropped
    no_question = b"\x00\x01\x01\x00" + b"\x00" * 8  # QDCOUNT 0: FORMERR

    def work(i: int) -> None:
        for n in range(EACH):
            screened(no_question, stats)
            screened(bad_header, stats)
            stats.drop(f"reason {n % 97} of thread {i % 2}")  # new keys race too

    _on_threads(work)
    assert stats.formerr == THREADS * EACH
    assert stats.dropped["short"] == THREADS * EACH
    assert sum(count for reason, count in stats.dropped.items() if reason != "short") == (
        THREADS * EACH
    )


def test_cache_hits_on_several_listener_threads_are_all_counted(switching_often: None) -> None:
    cache = AnswerCache(lambda ip: True)
    asked = dns.message.make_query("web.docker", "A").to_wire()
    reply = asked[:2] + b"\x85\x80" + asked[4:]
    cache.put(asked, [reply, reply + b"x"], float("inf"), False)  # two rotations: the slow hit
    answered = [0] * THREADS

    def work(i: int) -> None:
        slot = cache.listener_slot()
        for _ in range(EACH):
            if cache.answer(asked, "127.0.0.1", 1.0, slot) is not None:
                answered[i] += 1

    _on_threads(work)
    assert sum(answered) == THREADS * EACH
    assert cache.hits == THREADS * EACH


def test_recursion_memo_written_from_several_threads_stays_right(switching_often: None) -> None:
    acl = Acl(["127.0.0.0/8"])
    wrong: list[str] = []

    def work(i: int) -> None:
        for n in range(EACH):
            ip = f"127.0.{i}.{n % 250}" if n % 2 else f"192.0.2.{n % 250}"
            if acl.allows(ip) != ip.startswith("127."):
                wrong.append(ip)
            decided = acl.decided(ip)
            if decided is not None and decided != ip.startswith("127."):
                wrong.append(ip)

    _on_threads(work)
    assert wrong == []


def test_a_dnsd_with_several_listen_addresses_counts_every_answer(
    dnsd_factory: DnsdFactory,
) -> None:
    """Three UDP listener threads (one per address) answer at once; hits + misses on
    /metrics equal the questions answered, exactly."""
    port = free_port()
    addresses = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    extra = [arg for address in addresses[1:] for arg in ("--listen", f"{address}:{port}")]
    hosts_config = '[[static.records]]\nname = "web"\ntype = "A"\nvalue = "10.0.0.1"\n'
    dnsd = dnsd_factory("--no-forward", *extra, port=port, config=hosts_config)
    before_hits = dnsd.metric("dnsd_answer_cache_hits_total")
    before_misses = dnsd.metric("dnsd_answer_cache_misses_total")
    answered = [0] * len(addresses)

    def work(i: int) -> None:
        for _ in range(300):
            message = dns.message.make_query("web.docker", "A")
            reply = dns.query.udp(message, addresses[i], port=port, timeout=2)
            if reply.answer:
                answered[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(addresses))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answered == [300] * len(addresses)
    hits = dnsd.metric("dnsd_answer_cache_hits_total") - before_hits
    misses = dnsd.metric("dnsd_answer_cache_misses_total") - before_misses
    assert hits + misses == 900 and hits >= 900 - len(addresses) * 2
    assert query(port, "web.docker").answer
