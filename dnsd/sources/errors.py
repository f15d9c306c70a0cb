"""How a source says why it lost its backend, in one short line (for logs and /ready)."""

from __future__ import annotations


def reason(exc: BaseException) -> str:
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):  # a gRPC error: say it the short way
        return f"{code()}: {details()}"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
