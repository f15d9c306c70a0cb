"""The query log (dnsmasq ``log-queries``, CoreDNS ``log``): one line per answered query.

Each line: client, name, type, rcode, where the answer came from (``cache``: the packed-answer
cache; ``local``: the zones; ``upstream``: forwarding, its cache included) and microseconds.
Off by default; when off, nothing here runs (the listeners pick a loop without it).  Reads
only bytes: the query's name and type and the response's rcode.  Logged through
``dnsd.queries`` at INFO, so ``--log-format json`` gives JSON lines with the same fields.
At most ``log.queries_per_second`` lines a second: the rest are counted, not written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from dnslib import QTYPE, RCODE

from dnsd.protocol import HEADER_LEN
from dnsd.stats import Stats

logger = logging.getLogger("dnsd.queries")


def _name(data: bytes) -> tuple[str, int]:
    """The question's name (lower-cased, dotted) and the offset of its type."""
    labels = []
    pos = HEADER_LEN
    while pos < len(data) and data[pos] and data[pos] < 64:
        length = data[pos]
        labels.append(data[pos + 1 : pos + 1 + length].decode("ascii", "replace"))
        pos += length + 1
    return ".".join(labels).lower() + ".", pos + 1


DEFAULT_LINES_PER_SECOND = 100


class QueryLog:
    """Lines beyond ``lines_per_second`` in a second are left out and counted (``skipped``);
    the next line logged says how many were, so a flood cannot fill the disk (one client at
    50,000 queries/s would otherwise write 7 MB a second)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.perf_counter,
        lines_per_second: int = DEFAULT_LINES_PER_SECOND,
        stats: Stats | None = None,
    ) -> None:
        self.clock = clock
        self.lines_per_second = lines_per_second
        self._stats = stats or Stats()  # query_log_skipped: in all, for the metric
        self._second = -1
        self._left = 0
        self._skipped_since = 0  # since the last line logged
        self._lock = threading.Lock()

    def _admit(self) -> bool:
        """Whether this line may be written (the listener threads and the loop both log:
        the budget is counted under ``_lock``)."""
        with self._lock:
            return self._admit_locked()

    def _admit_locked(self) -> bool:
        second = int(self.clock())
        if second != self._second:
            self._second, self._left = second, self.lines_per_second
        if self._left <= 0:
            self._stats.query_log_skipped += 1
            self._skipped_since += 1
            return False
        self._left -= 1
        if self._skipped_since:
            logger.warning(
                "query log: %d lines left out (over log.queries_per_second = %d)",
                self._skipped_since,
                self.lines_per_second,
                extra={"event": "query_log_skipped", "skipped": self._skipped_since},
            )
            self._skipped_since = 0
        return True

    def log(self, client: str, query: bytes, response: bytes, source: str, started: float) -> None:
        if not self._admit():
            return
        name, at = _name(query)
        qtype = int.from_bytes(query[at : at + 2], "big") if len(query) >= at + 2 else 0
        rcode = response[3] & 0x0F if len(response) > 3 else 0
        took_us = int((self.clock() - started) * 1e6)
        type_name, rcode_name = QTYPE.get(qtype, str(qtype)), RCODE.get(rcode, str(rcode))
        logger.info(
            "query %s %s %s %s %s %dus",
            client,
            name,
            type_name,
            rcode_name,
            source,
            took_us,
            extra={"event": "query", "client": client, "dns_name": name, "qtype": type_name,
                   "rcode": rcode_name, "answered_by": source, "us": took_us},
        )  # fmt: skip
