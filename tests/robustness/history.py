"""A history of writes and answers, and the check that explains every answer by the writes.

Each writer (an etcd writer, a Docker engine writer, a hosts-file writer, a store writer)
changes its own names, one change at a time; a change is recorded with the time it was sent
and the time it returned (etcd: committed), so it took effect somewhere in between.  Each
answer is recorded with the time its question was sent and the time the reply came.

An answer is right when it equals the model's answer (``model.expected``) in some state the
writer's names were in between ``sent - bound`` and ``received``: the state after every
change that had returned by ``sent - bound`` and any number of the later changes, in order
(a writer's changes are sequential: these are its states in that window).  ``bound`` is the
staleness allowed (dnsd's propagation from a source to its answers).  Around an injected fault
that cuts dnsd off a source (``excuse``), answers about that source may be as old as the
fault's start: dnsd serves what it last had.  SERVFAIL and unanswered questions are not
wrong, they are counted (availability, not consistency).
"""

from __future__ import annotations

import bisect
import re
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from robustness.model import Reply, Value, expected

NO_ANSWER = ("SERVFAIL", "timeout", "REFUSED")


@dataclass(frozen=True)
class Write:
    names: tuple[str, ...]  # what it changed
    sent: float
    returned: float


@dataclass(frozen=True)
class Asked:
    writer: str
    name: str
    qtype: str
    transport: str
    sent: float
    received: float
    reply: Reply


@dataclass
class _Writer:
    """One writer's changes and the state after each (``states[i]``: after ``i`` changes)."""

    writes: list[Write] = field(default_factory=list)
    states: list[dict[str, Value]] = field(default_factory=lambda: [{}])
    returned: list[float] = field(default_factory=list)  # writes[i].returned, for bisect
    sent: list[float] = field(default_factory=list)


@dataclass
class Violation:
    asked: Asked
    candidates: list[Reply]

    def __str__(self) -> str:
        a = self.asked
        seen = ", ".join(f"{r.rcode} {list(r.answer)}" for r in self.candidates[-3:])
        return (
            f"{a.name} {a.qtype} over {a.transport} [{a.sent:.3f}, {a.received:.3f}]: got "
            f"{a.reply.rcode} {list(a.reply.answer)}; the model allowed: {seen}"
        )


@dataclass
class Report:
    checked: int = 0
    unanswered: int = 0
    unanswered_by: dict[str, int] = field(default_factory=dict)  # rcode or "timeout"
    violations: list[Violation] = field(default_factory=list)
    largest_staleness_s: float = 0.0  # outside the faults' windows
    stalest: str = ""  # which answer that was
    largest_staleness_in_faults_s: float = 0.0
    writes: int = 0
    faults: list[str] = field(default_factory=list)
    by_writer: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        writers = ", ".join(f"{w} {n}" for w, n in sorted(self.by_writer.items()))
        counted = Counter(re.sub(r"\bm\d+\b", "m*", fault) for fault in self.faults)
        kinds = "; ".join(f"{n}x {fault}" for fault, n in counted.items())
        lines = [
            f"answers checked: {self.checked} ({writers})",
            f"unanswered: {self.unanswered} {dict(sorted(self.unanswered_by.items()))}",
            f"violations: {len(self.violations)}",
            f"largest staleness: {self.largest_staleness_s * 1000:.0f} ms ({self.stalest}; "
            f"{self.largest_staleness_in_faults_s * 1000:.0f} ms around faults)",
            f"writes: {self.writes}",
            f"faults injected: {len(self.faults)} ({kinds})",
        ]
        lines += [f"  {v}" for v in self.violations[:10]]
        return "\n".join(lines)


class History:
    """Thread-safe: writers, readers and fault injectors record from their own threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._writers: dict[str, _Writer] = {}
        self.asked: list[Asked] = []
        self.faults: list[str] = []
        self._excused: list[tuple[str, float, float]] = []  # (writer, from, until)

    def wrote(
        self, writer: str, changes: Mapping[str, Value | None], sent: float, returned: float
    ) -> None:
        """``writer`` set each name in ``changes`` (None: removed), sent at ``sent``, returned
        at ``returned``; one writer's calls come one after another."""
        with self._lock:
            log = self._writers.setdefault(writer, _Writer())
            state = dict(log.states[-1])
            for name, value in changes.items():
                if value is None:
                    state.pop(name, None)
                else:
                    state[name] = value
            log.states.append(state)
            log.writes.append(Write(tuple(changes), sent, returned))
            log.returned.append(returned)
            log.sent.append(sent)

    def answered(self, asked: Asked) -> None:
        with self._lock:
            self.asked.append(asked)

    def fault(self, what: str, writers: tuple[str, ...], started: float, ended: float) -> None:
        """A fault that cut dnsd off ``writers``' source from ``started`` until ``ended`` (its
        recovery included): answers about them in that time may be as old as ``started``."""
        with self._lock:
            self.faults.append(what)
            for writer in writers:
                self._excused.append((writer, started, ended))

    def state(self, writer: str) -> dict[str, Value]:
        with self._lock:
            return dict(self._writers.setdefault(writer, _Writer()).states[-1])

    def check(self, bound_s: float) -> Report:
        with self._lock:
            asked = list(self.asked)
            report = Report(writes=sum(len(w.writes) for w in self._writers.values()))
            report.faults = list(self.faults)
            for item in asked:
                self._check_one(item, bound_s, report)
        return report

    def _oldest_allowed(self, item: Asked, bound_s: float) -> float:
        """``sent - bound_s``, or earlier in a fault's window."""
        oldest = item.sent - bound_s
        for writer, started, ended in self._excused:
            if writer == item.writer and started - bound_s <= item.received and item.sent <= ended:
                oldest = min(oldest, started - bound_s)
        return oldest

    def _check_one(self, item: Asked, bound_s: float, report: Report) -> None:
        if item.reply.rcode in NO_ANSWER:
            report.unanswered += 1
            rcode = item.reply.rcode
            report.unanswered_by[rcode] = report.unanswered_by.get(rcode, 0) + 1
            return
        report.checked += 1
        report.by_writer[item.writer] = report.by_writer.get(item.writer, 0) + 1
        log = self._writers.get(item.writer, _Writer())
        oldest = self._oldest_allowed(item, bound_s)
        first = bisect.bisect_left(log.returned, oldest)  # changes surely in by ``oldest``
        last = bisect.bisect_right(log.sent, item.received)  # changes begun by ``received``
        candidates = []
        for index in range(last, first - 1, -1):  # newest first
            reply = expected(log.states[index], item.name, item.qtype)
            if reply == item.reply:
                if index < last:  # a newer state existed: how long its change had returned
                    staleness = item.sent - log.writes[index].returned
                    if oldest < item.sent - bound_s:
                        report.largest_staleness_in_faults_s = max(
                            report.largest_staleness_in_faults_s, staleness
                        )
                    elif staleness > report.largest_staleness_s:
                        report.largest_staleness_s = staleness
                        report.stalest = f"{item.writer} {item.name} {item.qtype} {item.transport}"
                return
            candidates.append(reply)
        report.violations.append(Violation(item, candidates[::-1]))
