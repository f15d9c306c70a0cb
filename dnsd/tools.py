"""Operator tools behind ``dnsd records`` and ``dnsd query``: clients of a running dnsd.

They print to stdout, errors to stderr, and return exit codes (0 ok, 1 not reachable or no
answer); they never start anything."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from dnslib import QTYPE, DNSRecord

from dnsd.hostport import parse_hostport

COLUMNS = ("name", "type", "value", "ttl", "source", "node", "container", "health", "reason")
NODE_COLUMNS = ("node", "keys", "lease", "lease_left_s")


def _fetch(http: str, path: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://{http}{path}", timeout=5) as response:
        rows: list[dict[str, Any]] = json.load(response)
    return rows


def _cell(value: Any) -> str:
    """A table cell; a TXT value (a JSON list of strings) in DNS presentation format."""
    if value is None:
        return "-"
    if isinstance(value, list):
        return " ".join('"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"' for s in value)
    return str(value)


def _print_rows(http: str, path: str, columns: tuple[str, ...], what: str, as_json: bool) -> int:
    try:
        rows = _fetch(http, path)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"dnsd: cannot reach dnsd's HTTP endpoint at {http}: {reason} "
              "(is it running with --http / [http] listen?)", file=sys.stderr)  # fmt: skip
        return 1
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in table)]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    print(f"{len(rows)} {what if len(rows) != 1 else what.removesuffix('s')}", file=sys.stderr)
    return 0


def print_records(http: str, name: str, source: str, as_json: bool) -> int:
    query = urllib.parse.urlencode({k: v for k, v in (("name", name), ("source", source)) if v})
    path = "/records" + (f"?{query}" if query else "")
    return _print_rows(http, path, COLUMNS, "records", as_json)


def print_nodes(http: str, as_json: bool) -> int:
    """The nodes publishing to etcd: their keys and the time their lease has left."""
    return _print_rows(http, "/nodes", NODE_COLUMNS, "nodes", as_json)


def query(name: str, rtype: str, server: str, tcp: bool, timeout: float) -> int:
    if rtype.upper() not in QTYPE.reverse:
        print(f"dnsd: unknown record type {rtype!r} (e.g. A, AAAA, SRV, TXT, PTR)", file=sys.stderr)
        return 2
    try:
        host, port = parse_hostport(server, 53)
        question = DNSRecord.question(name, rtype.upper())
    except (ValueError, AttributeError, KeyError) as exc:
        print(f"dnsd: {exc}", file=sys.stderr)
        return 1
    try:
        raw = question.send(host, port, tcp=tcp, timeout=timeout, ipv6=":" in host)
        reply = DNSRecord.parse(raw)
    except (TimeoutError, OSError) as exc:
        print(f"dnsd: no answer from {server}: {exc or 'timed out'}", file=sys.stderr)
        return 1
    except Exception as exc:  # an unparsable reply
        print(f"dnsd: bad reply from {server}: {exc}", file=sys.stderr)
        return 1
    print(reply)
    return 0
