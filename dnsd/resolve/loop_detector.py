"""Forwarding-loop detection (CoreDNS ``loop`` style).

When dnsd's upstream is dnsd itself — a ``nameserver 127.0.0.1`` line while it listens on
0.0.0.0:53, a container whose resolver is its own address, two servers forwarding to each
other — every outside name would time out and SERVFAIL, silently.  At start, one probe name per
upstream (``<random>.<random>.dnsd-loop.invalid.``; ``.invalid`` never exists, RFC 2606) is
sent to that upstream.  If a probe comes back to dnsd as a question, that upstream leads to
itself: it is dropped (logged once, loudly) and the probe answered REFUSED so the loop ends.
Knows nothing about sockets; the resolver chain asks it about every question.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable

from dnsd.resolve.upstreams import Upstream

logger = logging.getLogger(__name__)

PROBE_SUFFIX = "dnsd-loop.invalid."


class LoopDetector:
    def __init__(
        self,
        ask: Callable[[Upstream, str], Awaitable[object]],
        drop: Callable[[Upstream], None],
    ) -> None:
        self._ask = ask
        self._drop = drop
        self.probes: dict[str, Upstream] = {}
        self.looped: list[Upstream] = []

    async def probe(self, upstreams: list[Upstream]) -> None:
        """Send one probe to each upstream (their answers do not matter)."""
        for upstream in upstreams:
            name = f"{secrets.token_hex(8)}.{secrets.token_hex(8)}.{PROBE_SUFFIX}"
            self.probes[name] = upstream
        for name, upstream in list(self.probes.items()):
            try:
                await self._ask(upstream, name)
            except Exception as exc:  # an upstream that is down is not a loop
                logger.debug("loop probe to %s: %r", upstream, exc)

    def returned(self, qname: str) -> bool:
        """True when ``qname`` is one of our probes coming back: a loop, handled here."""
        upstream = self.probes.pop(qname, None)
        if upstream is None:
            return False
        self.looped.append(upstream)
        logger.error(
            "forwarding loop: upstream %s sends dnsd's own questions back to it; no longer "
            "forwarding there (check forward.upstreams and resolv.conf)",
            upstream,
            extra={"event": "forwarding_loop"},
        )
        self._drop(upstream)
        return True
