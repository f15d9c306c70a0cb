"""Records the store refused: counted by source and kind of reason, and logged once per
(source, owner, name, kind), the first few of each kind one by one, then in a throttled
summary line (every refused record stays visible in /records)."""

from __future__ import annotations

import logging
from collections import Counter

from dnsd.logs import Throttled
from dnsd.record import Record

logger = logging.getLogger(__name__)
_throttled = Throttled(logger, interval_s=60.0)

LOGGED_LINES = 10_000  # remembered (source, owner, name, kind) lines, then forgotten
LOGGED_PER_KIND = 10  # refusals of one source and kind logged one by one; then a summary line


class RefusalLog:
    def __init__(self, static_reason: str) -> None:
        """``static_reason``: the reason given for a name the static zone holds."""
        self._static_reason = static_reason
        self.counts: Counter[tuple[str, str]] = Counter()  # (source, kind) -> records
        self._logged: set[tuple[str, str, str, str]] = set()
        self._logged_kinds: Counter[tuple[str, str]] = Counter()

    def kind(self, why: str) -> str:
        """A bounded metric label for a refusal reason."""
        if why == self._static_reason:
            return "static name"
        if "outside the zones" in why:
            return "outside zones"
        return "invalid"

    def refused(self, source: str, owner: str, record: Record, why: str) -> None:
        kind = self.kind(why)
        self.counts[(source, kind)] += 1
        line = (source, owner, record.name, kind)
        if line in self._logged:
            return
        if len(self._logged) >= LOGGED_LINES:
            self._logged.clear()
        self._logged.add(line)
        self._logged_kinds[(source, kind)] += 1
        if self._logged_kinds[(source, kind)] > LOGGED_PER_KIND:
            _throttled.warning(
                f"{source} {kind}",
                "%s records refused (%s), e.g. %s from %s: %s; all of them in /records",
                source,
                kind,
                record.name,
                owner,
                why,
            )
            return
        logger.warning(
            "%s record %s %s from %s refused: %s",
            source,
            record.name,
            record.rtype,
            owner,
            why,
            extra={"event": "record_refused", "source": source, "dns_name": record.name},
        )
