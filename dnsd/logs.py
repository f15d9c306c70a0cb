"""Logging set-up: human text or JSON lines (one object per record, for log shippers)."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

# Extra fields a caller may attach with ``extra={...}``; copied into JSON lines when present.
# A DNS name travels as ``dns_name`` (``name`` is the logger's own attribute) and is written
# as "name"; the logger's name is written as "logger".
CONTEXT_FIELDS = {"event": "event", "dns_name": "name", "container": "container",
                  "source": "source", "node": "node", "client": "client", "qtype": "type",
                  "rcode": "rcode", "answered_by": "answered_by", "us": "us"}  # fmt: skip
NOISY_LIBRARIES = ("urllib3", "docker")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for attribute, key in CONTEXT_FIELDS.items():
            value = getattr(record, attribute, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in NOISY_LIBRARIES:  # one line per HTTP request to the Docker Engine
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))


def event(name: str, source: str | None = None, **fields: str) -> dict[str, str]:
    """``extra=`` for a lifecycle log line: its event name and context fields (JSON lines)."""
    extra = {"event": name, **fields}
    if source is not None:
        extra["source"] = source
    return extra


class Throttled:
    """Per-packet trouble logged at most once per ``interval_s`` per kind, with a count of what
    was held back, so a flood of bad packets can never fill the log or cost a traceback each."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0, clock: Any = None) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock or time.monotonic
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()  # logged from the listener and source threads too

    def warning(self, kind: str, message: str, *args: object) -> bool:
        """Log ``message`` unless ``kind`` was logged less than the interval ago; True if logged."""
        return self.log(logging.WARNING, kind, message, *args)

    def info(self, kind: str, message: str, *args: object) -> bool:
        return self.log(logging.INFO, kind, message, *args)

    def error(self, kind: str, message: str, *args: object) -> bool:
        return self.log(logging.ERROR, kind, message, *args)

    def log(self, level: int, kind: str, message: str, *args: object) -> bool:
        now = self._clock()
        with self._lock:
            if now < self._next.get(kind, 0.0):
                self._held[kind] = self._held.get(kind, 0) + 1
                return False
            held = self._held.pop(kind, 0)
            if len(self._next) > 1024:
                self._next.clear()
            self._next[kind] = now + self._interval_s
        suffix = f" ({held} more like it since the last line)" if held else ""
        self._logger.log(level, message + suffix, *args)
        return True
