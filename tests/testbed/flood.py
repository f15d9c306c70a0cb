"""A paced UDP flood, in its own process (so the sender's CPU is not the test's GIL):
``python tests/testbed/flood.py PORT RATE SECONDS SOURCE [KIND]``.  SOURCE is one address
or a range of the last byte (``127.0.0.2-250``: a socket on each, taking turns).

KIND ``mutated`` (the default): every packet is a fresh mutation of a plain question (1 to 4
random bytes changed), as a fuzzer would send: most are still questions (other names, types,
classes, flags), so most are misses for the packed-answer cache.  KIND ``names``: questions
for random names under ``docker.`` (each a miss).  Replies are read and thrown away.  Prints
the count sent.
"""

from __future__ import annotations

import contextlib
import random
import socket
import sys
import time

import dns.message

DISTINCT = 200_000  # packets made up front, sent in turn (making them costs more than sending)


def mutated(count: int, seed: int = 1) -> list[bytes]:
    base = dns.message.make_query("web.docker", "A").to_wire()
    rng = random.Random(seed)
    packets = []
    for _ in range(count):
        packet = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            packet[rng.randrange(len(packet))] = rng.randrange(256)
        packets.append(bytes(packet))
    return packets


def random_names(count: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [
        dns.message.make_query(f"r{rng.getrandbits(48):x}.docker", "A").to_wire()
        for _ in range(count)
    ]


def sources(spec: str) -> list[str]:
    """``127.0.0.2-250`` -> 127.0.0.2 ... 127.0.0.250; one address -> itself."""
    base, _, last = spec.rpartition(".")
    if "-" not in last:
        return [spec]
    low, high = (int(n) for n in last.split("-"))
    return [f"{base}.{n}" for n in range(low, high + 1)]


def flood(port: int, rate: float, seconds: float, source: str, kind: str = "mutated") -> int:
    packets = mutated(DISTINCT) if kind == "mutated" else random_names(DISTINCT // 4)
    socks = []
    for address in sources(source):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, 0))
        sock.setblocking(False)
        socks.append(sock)
    target = ("127.0.0.1", port)
    sent = 0
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        while sent < elapsed * rate:
            with contextlib.suppress(BlockingIOError):  # the socket's buffer is full: a drop
                socks[sent % len(socks)].sendto(packets[sent % len(packets)], target)
            sent += 1
        for sock in socks:
            with contextlib.suppress(BlockingIOError):
                while sock.recv(4096):
                    pass
        time.sleep(0.001)
    return sent


if __name__ == "__main__":
    port, rate, seconds, source = sys.argv[1:5]
    kind = sys.argv[5] if len(sys.argv) > 5 else "mutated"
    print(flood(int(port), float(rate), float(seconds), source, kind))
