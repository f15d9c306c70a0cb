"""The listeners and the event loop under a GIL that switches threads as often as it can
(``sys.setswitchinterval(1e-6)``) while the record store changes: every answer is checked
against the history of changes, with no staleness allowed.

dnsd runs in this process (``Daemon``, its UDP listener threads and its event loop on a thread
of its own), so the switch interval applies to it; a writer changes the store on the loop (the
change's ``returned`` is when the loop has applied it), readers ask over UDP and TCP from
several addresses, and CNAMEs out of the zone wait for a slow upstream.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path

from testbed.dnsd import free_port
from testbed.upstream import FakeUpstream

from dnsd.config import load
from dnsd.daemon import Daemon
from dnsd.record import Record
from robustness.harness import READER_ADDRESSES, ask
from robustness.history import History
from robustness.model import OUTSIDE, TYPES, ZONE, Value, random_value, upstream_zone_lines

DURATION_S = 10.0
WRITES_PER_S = 100.0
SOURCE = "stress"
WRITER = "store"


class InProcess:
    """A ``Daemon`` on an event loop of its own thread."""

    def __init__(self, upstream_port: int) -> None:
        self.port = free_port()
        flags = {
            ("server", "listen"): [f"127.0.0.1:{self.port}"],
            ("forward", "upstreams"): [f"127.0.0.1:{upstream_port}"],
            ("docker", "enabled"): False,
        }
        self.config = load(flags=flags)  # type: ignore[arg-type]
        self.daemon = Daemon(self.config, lambda: self.config)
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.daemon.start())
        self._started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.daemon.stop())
        self.loop.close()

    def start(self) -> InProcess:
        self._thread.start()
        assert self._started.wait(30), "dnsd did not start"
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)

    def set(self, name: str, value: Value | None) -> None:
        """Change ``name`` on the loop, as a source does; returns once it is applied."""
        applied = threading.Event()

        def change() -> None:
            records = []
            if value is not None:
                data = (value.data,) if value.rtype == "TXT" else value.data
                records = [Record(name, value.rtype, data, value.ttl)]
            self.daemon.store.replace_owner(SOURCE, name, records)
            applied.set()

        self.loop.call_soon_threadsafe(change)
        assert applied.wait(10), "the loop did not apply a change"


def test_answers_under_constant_thread_switching_match_the_history(
    tmp_path: Path, switching_often: None
) -> None:
    rng = random.Random()
    names = [f"e{i}.{ZONE}" for i in range(16)]
    leaves = [f"t{i}.{ZONE}" for i in range(4)]
    outside = [f"x{i}.{OUTSIDE}" for i in range(4)]
    delays = random.Random()
    upstream = FakeUpstream(
        scripted=upstream_zone_lines(outside, ttl=2), delay_of=lambda _: delays.uniform(0.01, 0.2)
    ).start()
    dnsd = InProcess(upstream.port).start()
    history = History()
    stopping = threading.Event()

    def write() -> None:
        while not stopping.wait(rng.expovariate(WRITES_PER_S)):
            name = rng.choice(names + leaves)
            value = random_value(rng, name, leaves, outside)
            sent = time.monotonic()
            dnsd.set(name, value)
            history.wrote(WRITER, {name: value}, sent, time.monotonic())

    def read(i: int) -> None:
        reader = random.Random(i)
        while not stopping.is_set():
            name = reader.choice(names + leaves)
            qtype = reader.choice(TYPES)
            tcp = reader.random() < 0.2
            source = READER_ADDRESSES[i % len(READER_ADDRESSES)]
            history.answered(ask(dnsd.port, WRITER, name, qtype, tcp, source))

    threads = [threading.Thread(target=write)]
    threads += [threading.Thread(target=read, args=(i,)) for i in range(4)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(DURATION_S)
    finally:
        stopping.set()
        for thread in threads:
            thread.join(30)
        dnsd.stop()
        upstream.stop()
    stats = dnsd.daemon.stats
    print(f"rebuilt {stats.answers_rebuilt}, overtaken {stats.answers_overtaken}")
    report = history.check(bound_s=0.0)
    print(report.summary())
    assert not report.violations, report.summary()
    assert report.checked >= 500 and report.writes >= 200, report.summary()
    assert report.unanswered == 0, report.summary()  # a slow upstream, but none failing
