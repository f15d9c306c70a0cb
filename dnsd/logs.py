"""Logging set-up: human text or JSON lines (one object per record, for log shippers)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

# Extra fields a caller may attach with ``extra={...}``; copied into JSON lines when present.
CONTEXT_FIELDS = ("event", "name", "container", "source", "node")
NOISY_LIBRARIES = ("urllib3", "docker")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
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
