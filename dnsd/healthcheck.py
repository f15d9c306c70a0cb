"""The container image's HEALTHCHECK: healthy means dnsd answers DNS, not only that a process
runs.  ``python -m dnsd.healthcheck [ADDR:PORT]`` sends one SOA question for ``docker.`` over
UDP (default 127.0.0.1:53) and exits 0 on any reply with its ID (even REFUSED: the listener
works), 1 on silence.  Imports nothing but the standard library: it runs every few seconds.
"""

from __future__ import annotations

import os
import socket
import sys

TIMEOUT_S = 2.0
_QUESTION = b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x06docker\x00\x00\x06\x00\x01"


def main(argv: list[str]) -> int:
    host, _, port = (argv[0] if argv else "127.0.0.1:53").rpartition(":")
    ident = os.urandom(2)
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT_S)
        try:
            sock.sendto(ident + _QUESTION, (host.strip("[]"), int(port)))
            while True:
                if sock.recv(4096)[:2] == ident:
                    return 0
        except OSError as exc:
            print(f"dnsd healthcheck: no DNS answer from {host}:{port}: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
