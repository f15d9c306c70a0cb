"""The query log (dnsmasq ``log-queries``, CoreDNS ``log``): one line per answered query.

Each line: client, name, type, rcode, where the answer came from (``cache``: the packed-answer
cache; ``local``: the zones; ``upstream``: forwarding, its cache included) and microseconds.
Off by default; when off, nothing here runs (the listeners pick a loop without it).  Reads
only bytes: the query's name and type and the response's rcode.  Logged through
``dnsd.queries`` at INFO, so ``--log-format json`` gives JSON lines with the same fields.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from dnslib import QTYPE, RCODE

from dnsd.wire.codec import HEADER_LEN

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


class QueryLog:
    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock

    def log(self, client: str, query: bytes, response: bytes, source: str, started: float) -> None:
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
