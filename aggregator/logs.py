"""Structured logs: one JSON object (or key=value line) per record, with typed fields.

python-json-logger builds and serialises the record; this module only fixes the field names
(``ts``, ``level``, ``logger``, ``event``, the caller's fields, ``exc``) and adds the key=value
rendering. Callers pass facts as fields (ids, counts, sizes, reasons). Tokens, file contents and
patient data are never logged; ``log_event`` drops any field whose name says it is a secret.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

_SECRET_HINTS = ("token", "secret", "password", "authorization")
_RENAMES = {"levelname": "level", "name": "logger", "message": "event", "exc_info": "exc"}


class StructuredFormatter(JsonFormatter):
    """Formats records as JSON lines (``fmt="json"``) or ``key=value`` pairs (``fmt="kv"``).

    Only the fixed fields and those ``log_event`` attached are written: other ``extra``
    attributes of a record (uvicorn's ``color_message``, say) are left out.

    Args:
        fmt: ``json`` or ``kv``. Default ``json``.
    """

    def __init__(self, fmt: str = "json") -> None:
        super().__init__(
            list(_RENAMES)[:3],
            rename_fields=_RENAMES,
            timestamp="ts",
            json_default=str,
            json_serializer=_compact_json if fmt == "json" else _kv_line,
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        """Keep the fixed fields (in their order), flatten ``log_event``'s, drop other extras."""
        out: dict[str, Any] = {
            "ts": log_data["ts"].isoformat(timespec="milliseconds"),
            "level": str(log_data["level"]).lower(),
            "logger": log_data["logger"],
            "event": log_data["event"],
        }
        fields = log_data.get("fields")
        if isinstance(fields, dict):
            out.update(fields)
        if "exc" in log_data:
            out["exc"] = log_data["exc"]
        return out


def _compact_json(data: dict[str, Any], **kwargs: Any) -> str:
    return json.dumps(data, separators=(",", ":"), **kwargs)


def _kv_line(data: dict[str, Any], **_: Any) -> str:
    return " ".join(f"{k}={_kv(v)}" for k, v in data.items())


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
