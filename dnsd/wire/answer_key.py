"""The packed-answer cache's key, and the UDP size an answer is fitted to: one clamp for
both, so a key always stands for the bytes the packer makes (``QueryHandler`` fits a reply
with ``udp_reply_limit``; the key holds the same clamped size)."""

from __future__ import annotations

from dnsd.protocol import CLASSIC_UDP_SIZE
from dnsd.wire.codec import DEFAULT_MAX_UDP_SIZE, OPT_FIXED_BYTES, plain_shape


def udp_reply_limit(edns_size: int, max_udp_size: int) -> int:
    """The largest UDP reply to a query offering ``edns_size`` bytes: at least the classic
    512 (RFC 6891 6.2.5), at most dnsd's own ``max_udp_size``."""
    return min(max(edns_size, CLASSIC_UDP_SIZE), max_udp_size)


def normalised_key(
    data: bytes, max_udp_size: int = DEFAULT_MAX_UDP_SIZE
) -> tuple[bytes | None, int, bool]:
    """(key, end of the question, whether the query carries EDNS options) for ``data``; key
    None when the packet is not plain (``plain_shape``).

    The key is the header without its ID, the lower-cased question and the OPT record's fixed
    part (UDP size clamped as the answer is fitted, version, DO bit): its options (cookies,
    padding) are left out.  The hot path builds the same bytes with two slices (the size as
    sent: ``answer`` clamps it when that misses); only ``put`` checks the packet's shape, so a
    key it stores always belongs to a well-formed question.  ``put`` caches only packets whose
    labels really end at the first zero byte, so a crafted name with a zero byte inside a label
    can never share a key with a real one.
    """
    qend, has_options = plain_shape(data)
    if qend < 0:
        return None, -1, False
    # Lower-casing the header with the question is safe: a header byte it changes is an
    # opcode or a count that is never cached, or the Z/AD bits, which no answer depends on.
    key = data[2:qend].lower() + data[qend : qend + OPT_FIXED_BYTES]
    return clamped(key, qend - 2, max_udp_size), qend, has_options


def clamped(key: bytes, opt_at: int, max_udp_size: int) -> bytes:
    """``key`` with the OPT record's UDP size (at ``opt_at``) clamped to what the answer is
    fitted to (512 to ``max_udp_size``); ``key`` itself when it has no OPT or needs none."""
    if len(key) < opt_at + OPT_FIXED_BYTES:
        return key
    size = (key[opt_at + 3] << 8) | key[opt_at + 4]
    fitted = udp_reply_limit(size, max_udp_size)
    if fitted == size:
        return key
    return key[: opt_at + 3] + fitted.to_bytes(2, "big") + key[opt_at + 5 :]
