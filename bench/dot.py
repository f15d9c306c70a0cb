"""Forwarding over DNS-over-TLS: questions per second through one local DoT upstream.

A dnsd forwards to a local TLS upstream (tests/testbed: a test CA, 127.0.0.1); a client asks
names never asked before (every question goes upstream: no cache hit), ``--concurrency`` at a
time for ``--duration`` seconds.  Reports answered questions per second, SERVFAILs, and the
TLS connections the upstream accepted (one kept-open connection, or one per question).

    .venv/bin/python bench/dot.py [--duration S] [--concurrency N]
"""

from __future__ import annotations

import argparse
import ssl
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import run  # noqa: F401  (run.py puts tests/, the testbed, on the path)
from testbed import certs
from testbed.dnsd import start_dnsd
from testbed.upstream import FakeUpstream


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dnsd-bench-dot-") as tmp:
        made = certs.make(Path(tmp) / "tls")
        server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_tls.load_cert_chain(made.server_cert, made.server_key)
        upstream = FakeUpstream(address="10.8.5.5", tls=server_tls).start()
        config = (  # every question is a miss from one address: no per-client miss limit
            "[server]\nudp_miss_rate_per_client = 0\n"
            f'[forward]\nupstreams = ["tls://127.0.0.1:{upstream.port}#localhost"]\n'
            f'tls_ca = "{made.ca}"\n'
        )
        server = start_dnsd(Path(tmp), config=config)
        try:
            deadline = time.monotonic() + args.duration
            counts = {"answered": 0, "servfail": 0, "lost": 0}

            def client(worker: int) -> None:
                n = 0
                while time.monotonic() < deadline:
                    n += 1
                    message = dns.message.make_query(f"w{worker}-{n}.bench.example", "A")
                    try:
                        reply = dns.query.udp(message, "127.0.0.1", port=server.port, timeout=3)
                    except dns.exception.Timeout:
                        counts["lost"] += 1
                        continue
                    key = "answered" if reply.rcode() == dns.rcode.NOERROR else "servfail"
                    counts[key] += 1

            started = time.monotonic()
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(client, range(args.concurrency)))
            took = time.monotonic() - started
        finally:
            server.stop()
            upstream.stop()
    print(f"dot: {counts['answered'] / took:,.0f} forwarded q/s over DoT "
          f"(concurrency {args.concurrency}, {took:.1f} s), {counts['servfail']} SERVFAIL, "
          f"{counts['lost']} lost, {upstream.tcp_connections} TLS connections")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
