"""How a source says why it lost its backend, in one short line (for logs and /ready)."""

from __future__ import annotations

# gRPC status -> what it means for a client of etcd, in words.
_GRPC_WORDS = {
    "UNAVAILABLE": "the member is unreachable",
    "DEADLINE_EXCEEDED": "the member did not answer in time",
    "UNAUTHENTICATED": "etcd refused the credentials (authentication failed)",
    "PERMISSION_DENIED": "etcd refused access to the prefix",
    "RESOURCE_EXHAUSTED": "a reply was over the gRPC message limit",
    "INTERNAL": "the member reported an internal error",
    "CANCELLED": "the call was cancelled",
    "FAILED_PRECONDITION": "the member refused the request",
    "UNKNOWN": "the member failed the call",
}
# Phrases in gRPC's details -> what happened to the connection.
_DETAIL_WORDS = (
    ("goaway", "the member closed the connection (restarting or shutting down)"),
    ("socket closed", "the connection was closed"),
    ("connection refused", "nothing listens there (connection refused)"),
    ("failed to connect to all addresses", "no connection could be made"),
    ("keepalive", "the member stopped answering keepalive pings (frozen or cut off)"),
    ("ping timeout", "the member stopped answering keepalive pings (frozen or cut off)"),
    ("deadline", "no answer in time"),
    ("ssl", "the TLS handshake failed"),
    ("handshake", "the TLS handshake failed"),
    ("authentication", "etcd refused the credentials (authentication failed)"),
    ("name resolution", "the endpoint's host name does not resolve"),
)
_PYETCD_WORDS = {
    "ConnectionFailedError": "the member is unreachable",
    "ConnectionTimeoutError": "the member did not answer in time",
    "NoServerAvailableError": "no endpoint is reachable (every member failed recently)",
    "WatchTimedOut": "the watch did not start in time",
    "InternalServerError": "the member reported an internal error",
    "RevisionCompactedError": "the revision asked for is compacted",
}


def reason(exc: BaseException) -> str:
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):  # a gRPC error: say it the short way
        return f"{code()}: {details()}"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def explain(exc: BaseException) -> str:
    """What failed, in words (``the member closed the connection ...``), not raw gRPC text
    such as ``StatusCode.UNAVAILABLE: Stream removed (Socket closed (GOAWAY ...``."""
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):
        status = getattr(code(), "name", str(code()))
        raw = str(details() or "")
        if raw.startswith("etcdserver: "):  # etcd's own words: already readable
            return "etcd refused the request: " + raw.removeprefix("etcdserver: ")[:150]
        text = raw.lower()
        for phrase, words in _DETAIL_WORDS:
            if phrase in text:
                return words
        return _GRPC_WORDS.get(status, f"gRPC error {status}")
    known = _PYETCD_WORDS.get(type(exc).__name__)
    if known is not None:
        return known
    if isinstance(exc, OSError):
        return f"cannot connect: {exc.strerror or exc}"
    return reason(exc)
