"""Structured logs: one JSON object (or key=value line) per record, with typed fields.

Callers pass facts as fields (ids, counts, sizes, reasons). Tokens, file contents and patient
data are never logged; ``log_event`` drops any field whose name says it is a secret.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_SECRET_HINTS = ("token", "secret", "password", "authorization")


class StructuredFormatter(logging.Formatter):
    """Formats records as JSON lines (``fmt="json"``) or ``key=value`` pairs (``fmt="kv"``).

    Args:
        fmt: ``json`` or ``kv``. Default ``json``.
    """

    def __init__(self, fmt: str = "json") -> None:
        super().__init__()
        self._json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        payload.update(getattr(record, "fields", {}))
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        if self._json:
            return json.dumps(payload, default=str, separators=(",", ":"))
        return " ".join(f"{k}={_kv(v)}" for k, v in payload.items())


def _kv(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' "=\n')) else text


def configure_logging(*, level: str = "INFO", fmt: str = "json") -> None:
    """Route every logger (uvicorn's too) to stderr through ``StructuredFormatter``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(StructuredFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True


def log_event(
    logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: Any
) -> None:
    """Log one structured event. Example: ``log_event(log, "update.accepted", task_id=t, bytes=n)``."""
    safe = {k: v for k, v in fields.items() if not any(h in k.lower() for h in _SECRET_HINTS)}
    logger.log(level, event, extra={"fields": safe})
