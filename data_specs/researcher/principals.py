"""Schemas of researchers and sites. Tokens appear only in the ``...Created``/``...Registered`` replies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

_Strict = ConfigDict(extra="forbid", allow_inf_nan=False)
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")]


class ResearcherCreate(BaseModel):
    """``POST /researchers`` body.

    Args:
        name: unique display name. Example: ``"alice"``.
    """

    model_config = _Strict

    name: Name


class ResearcherCreated(BaseModel):
    """A new researcher; ``token`` is shown this once."""

    id: str
    name: str
    token: str


class SiteCreate(BaseModel):
    """``POST /sites`` body.

    Args:
        name: unique site name. Example: ``"hospital-a"``.
    """

    model_config = _Strict

    name: Name


class SiteRegistered(BaseModel):
    """A registered (or rotated) site; ``enrollment_token`` is shown this once."""

    id: str
    name: str
    enrollment_token: str


class SitePublic(BaseModel):
    """A site as researchers see it."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    status: str
    registered_by: str
    created_at: datetime
    enrolled_at: datetime | None
    last_seen_at: datetime | None
