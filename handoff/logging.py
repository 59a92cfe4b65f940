"""Structured logs: one JSON object per line, with secrets scrubbed (`LOG_FORMAT=json`)."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

# Whatever a log line may carry by accident: visitor tokens, session and CSRF cookies, API
# keys and Authorization headers. The value after the name is replaced, the name is kept.
_SECRET = re.compile(
    r"(?P<name>visitor_token|sessionid|csrftoken|csrfmiddlewaretoken|api[_-]?key|secret[_-]?key"
    r"|password|authorization|cookie|token)"
    r"(?P<sep>[\"']?\s*[:=]\s*[\"']?)"
    r"(?P<scheme>(?:bearer|token|basic)\s+)?"
    r"(?P<value>[^\s\"',;&}]+)",
    re.IGNORECASE,
)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """Replace the value of anything that looks like a credential in `text`."""
    return _SECRET.sub(
        lambda m: f"{m['name']}{m['sep']}{m['scheme'] or ''}{REDACTED}",
        text,
    )


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line: timestamp, level, logger, message, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "process": record.process,
        }
        if record.exc_info:
            entry["exc_info"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc_info"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack_info"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


class PlainFormatter(logging.Formatter):
    """The human-readable format, with the same scrubbing as the JSON one."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
