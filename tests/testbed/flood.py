"""A paced UDP flood from one source address, in its own process (so the sender's CPU is not
the test's GIL): ``python tests/testbed/flood.py PORT RATE SECONDS SOURCE``.

Every packet is a fresh mutation of a plain question (1 to 4 random bytes changed), as a
fuzzer would send: most are still questions (other names, types, classes, flags), so most are
misses for the packed-answer cache.  Replies are read and thrown away.  Prints the count sent.
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


def flood(port: int, rate: float, seconds: float, source: str) -> int:
    packets = mutated(DISTINCT)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.setblocking(False)
    target = ("127.0.0.1", port)
    sent = 0
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        while sent < elapsed * rate:
            with contextlib.suppress(BlockingIOError):  # the socket's buffer is full: a drop
                sock.sendto(packets[sent % DISTINCT], target)
            sent += 1
        with contextlib.suppress(BlockingIOError):
            while sock.recv(4096):
                pass
        time.sleep(0.001)
    return sent


if __name__ == "__main__":
    port, rate, seconds, source = sys.argv[1:5]
    print(flood(int(port), float(rate), float(seconds), source))
