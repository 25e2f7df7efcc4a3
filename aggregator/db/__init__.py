"""Database: SQLAlchemy 2 models and the engine (SQLite in WAL mode by default)."""

from __future__ import annotations

from aggregator.db.engine import Database
from aggregator.db.models import (
    Base,
    Consent,
    Event,
    Experiment,
    ExperimentStatus,
    GlobalModel,
    Grant,
    PersonalModel,
    Researcher,
    Round,
    RoundStatus,
    Site,
    SiteStatus,
    Task,
    TaskStatus,
)

__all__ = [
    "Base",
    "Consent",
    "Database",
    "Event",
    "Experiment",
    "ExperimentStatus",
    "GlobalModel",
    "Grant",
    "PersonalModel",
    "Researcher",
    "Round",
    "RoundStatus",
    "Site",
    "SiteStatus",
    "Task",
    "TaskStatus",
]
