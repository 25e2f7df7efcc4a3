"""SQLAlchemy 2 models: principals, experiments, rounds, tasks, models, grants and the audit log.

Blobs (weights) live in the content-addressed store; rows only name them by sha256.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

SHA_LEN = 64


def new_id() -> str:
    """A random opaque id (32 hex characters)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC (SQLite has no time zones) and gives back aware UTC datetimes."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class SiteStatus(StrEnum):
    REGISTERED = "registered"
    ENROLLED = "enrolled"
    REVOKED = "revoked"


class ExperimentStatus(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"


class RoundStatus(StrEnum):
    OPEN = "open"
    AGGREGATING = "aggregating"
    CLOSED = "closed"
    FAILED = "failed"  # this attempt; a retry opens attempt + 1
    ABORTED = "aborted"


class TaskStatus(StrEnum):
    ASSIGNED = "assigned"
    DELIVERED = "delivered"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


OPEN_TASK_STATES = (TaskStatus.ASSIGNED, TaskStatus.DELIVERED)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        list[str]: JSON,
    }


class Researcher(Base):
    __tablename__ = "researchers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    token_hash: Mapped[str] = mapped_column(String(SHA_LEN), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    token_issued_at: Mapped[datetime | None]  # None: at created_at
    revoked_at: Mapped[datetime | None]  # final: a revoked researcher never acts again


class Site(Base):
    __tablename__ = "sites"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    registered_by: Mapped[str] = mapped_column(ForeignKey("researchers.id"))
    status: Mapped[str] = mapped_column(String(16), default=SiteStatus.REGISTERED)
    enrollment_token_hash: Mapped[str | None] = mapped_column(String(SHA_LEN), unique=True)
    token_hash: Mapped[str | None] = mapped_column(String(SHA_LEN), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enrolled_at: Mapped[datetime | None]
    last_seen_at: Mapped[datetime | None]
    token_issued_at: Mapped[datetime | None]  # None: at enrolled_at
    max_samples: Mapped[int | None]  # training cases declared at enrolment; caps X-Num-Samples
    accept_policy: Mapped[list[str] | None] = mapped_column(JSON)  # standing consent (agent config)


class Experiment(Base):
    __tablename__ = "experiments"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    owner_id: Mapped[str] = mapped_column(ForeignKey("researchers.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=ExperimentStatus.CREATED)
    config: Mapped[dict[str, Any]]  # ExperimentCreate as JSON
    spec_hash: Mapped[str] = mapped_column(String(64))
    expected: Mapped[dict[str, Any]]  # {key: [shape, dtype]} of the spec's state dict
    local_keys: Mapped[list[str]]
    participants: Mapped[list[str] | None] = mapped_column(JSON)  # resolved at start
    initial_model_sha256: Mapped[str | None] = mapped_column(String(SHA_LEN))
    current_round: Mapped[int] = mapped_column(default=0)  # last aggregated round
    failure_reason: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class GlobalModel(Base):
    """The global model after round ``round`` (0: initial) plus the server optimiser state."""

    __tablename__ = "global_models"

    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id"), primary_key=True)
    round: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(SHA_LEN))
    size: Mapped[int]
    f16_sha256: Mapped[str | None] = mapped_column(String(SHA_LEN))
    f16_size: Mapped[int | None]
    state_sha256: Mapped[str | None] = mapped_column(String(SHA_LEN))
    num_updates: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Round(Base):
    """One attempt at a round: the sampled sites, a deadline and an outcome."""

    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("experiment_id", "number", "attempt"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id"), index=True)
    number: Mapped[int]
    attempt: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(String(16), default=RoundStatus.OPEN)
    sampled: Mapped[list[str]]
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    deadline_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]
    reason: Mapped[str | None] = mapped_column(String(1000))
    aggregating_at: Mapped[datetime | None]  # the round was claimed for aggregation
    aggregate_seconds: Mapped[float | None]  # the aggregation's own compute and write time


class Task(Base):
    """One sampled site's work in one round attempt, with what it sent back."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("round_id", "site_id"),
        Index("ix_tasks_site_status", "site_id", "status"),
        # On SQLite a round's open tasks are found without reading its others
        # (``crud.rounds.has_tasks``, asked on every orchestrator wake-up and tick): with an
        # index on the round alone, each ask read all N rows of an N-site round. Lookups by
        # round alone use it too.
        Index("ix_tasks_round_status", "round_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    round_id: Mapped[str] = mapped_column(ForeignKey("rounds.id"))
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id"))
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    round_number: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default=TaskStatus.ASSIGNED)
    seed: Mapped[int]
    model_sha256: Mapped[str] = mapped_column(String(SHA_LEN))
    model_size: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]
    bytes_down: Mapped[int] = mapped_column(Integer, default=0)
    bytes_up: Mapped[int] = mapped_column(Integer, default=0)
    update_sha256: Mapped[str | None] = mapped_column(String(SHA_LEN))  # as uploaded
    update_blob_sha256: Mapped[str | None] = mapped_column(
        String(SHA_LEN)
    )  # what aggregation reads
    num_samples: Mapped[int | None]
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reject_reason: Mapped[str | None] = mapped_column(String(1000))
    failure_reason: Mapped[str | None] = mapped_column(String(1000))
    reported_at: Mapped[datetime | None]


class RoundProgress(Base):
    """How many of a round attempt's tasks have not reported yet: one row per round.

    Written with the round's tasks (``crud.rounds.create_round``) and lowered by one in the same
    statement or transaction as each report that wins (an upload accepted or rejected, a
    failure: ``crud.site_requests``), so the report that brings it to 0 knows it was the round's
    last, in O(1): counting the round's open tasks on every upload cost O(N) per upload, O(N²)
    per round. Reports of one round queue on this row, not on the ``rounds`` row that the
    orchestrator locks before the round's tasks. Tasks that end unreported (expired at the
    deadline, cancelled by an abort) leave it as it was.
    """

    __tablename__ = "round_progress"

    round_id: Mapped[str] = mapped_column(ForeignKey("rounds.id"), primary_key=True)
    unreported: Mapped[int]


class PersonalModel(Base):
    """A site's personal model shared for outside routing (latest round wins)."""

    __tablename__ = "personal_models"
    __table_args__ = (UniqueConstraint("experiment_id", "site_id", "round"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id"), index=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    round: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(SHA_LEN))
    size: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Consent(Base):
    """A hospital's decision on one experiment (``approved`` or ``declined``), made by its site."""

    __tablename__ = "consents"

    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id"), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), primary_key=True)
    decision: Mapped[str] = mapped_column(String(16))
    decided_at: Mapped[datetime] = mapped_column(default=utcnow)


class Grant(Base):
    """Lets a site download an experiment's routing bundle."""

    __tablename__ = "grants"

    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id"), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), primary_key=True)
    granted_by: Mapped[str] = mapped_column(ForeignKey("researchers.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Event(Base):
    """Audit log entry, written in the same transaction as the change it records."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(80))  # "researcher:<id>", "site:<id>", "system"
    kind: Mapped[str] = mapped_column(String(64))
    experiment_id: Mapped[str | None] = mapped_column(ForeignKey("experiments.id"), index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
