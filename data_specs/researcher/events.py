"""Schema of an audit log entry."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class EventPublic(BaseModel):
    """One audit event: who did what, when, on which experiment."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str
    kind: str
    experiment_id: str | None
    detail: dict[str, Any]
