"""Database: SQLAlchemy 2 models and the engine (SQLite in WAL mode by default)."""

from __future__ import annotations

from aggregator.storage.db.dp_models import DpRoundClip
from aggregator.storage.db.engine import Database
from aggregator.storage.db.fingerprints import ExperimentPlanRow, SiteFingerprint
from aggregator.storage.db.models import (
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
from aggregator.storage.db.secagg_models import SecAggEntry, SecAggSum

__all__ = [
    "Base",
    "Consent",
    "Database",
    "DpRoundClip",
    "Event",
    "Experiment",
    "ExperimentPlanRow",
    "ExperimentStatus",
    "GlobalModel",
    "Grant",
    "PersonalModel",
    "Researcher",
    "Round",
    "RoundStatus",
    "SecAggEntry",
    "SecAggSum",
    "Site",
    "SiteFingerprint",
    "SiteStatus",
    "Task",
    "TaskStatus",
]
