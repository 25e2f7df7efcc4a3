"""Baseline: the schema of the last release before alembic (``create_all`` of its models).

Tolerant of databases that release made: tables it finds are kept with their rows, and only the
tables and nullable columns they lack are added (what that release's start-up did). An empty
database simply gets every table.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aggregator.storage.db.models import UTCDateTime
from aggregator.storage.db.schema_fill import fill_missing

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def baseline() -> sa.MetaData:
    """The baseline's tables, frozen here (later revisions change the live models, not these)."""
    metadata = sa.MetaData()
    sa.Table(
        "researchers",
        metadata,
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column("name", sa.String(length=200), nullable=False, unique=True),
        sa.Column("token_hash", sa.String(length=64), nullable=False, unique=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("token_issued_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
    )
    sa.Table(
        "experiments",
        metadata,
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "owner_id",
            sa.String(length=32),
            sa.ForeignKey("researchers.id"),
            nullable=False,
            index=True,
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("spec_hash", sa.String(length=64), nullable=False),
        sa.Column("expected", sa.JSON(), nullable=False),
        sa.Column("local_keys", sa.JSON(), nullable=False),
        sa.Column("participants", sa.JSON(), nullable=True),
        sa.Column("initial_model_sha256", sa.String(length=64), nullable=True),
        sa.Column("current_round", sa.Integer(), nullable=False),
        sa.Column("failure_reason", sa.String(length=1000), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
    )
    sa.Table(
        "sites",
        metadata,
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column("name", sa.String(length=200), nullable=False, unique=True),
        sa.Column(
            "registered_by", sa.String(length=32), sa.ForeignKey("researchers.id"), nullable=False
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("enrollment_token_hash", sa.String(length=64), nullable=True, unique=True),
        sa.Column("token_hash", sa.String(length=64), nullable=True, unique=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("enrolled_at", UTCDateTime(), nullable=True),
        sa.Column("last_seen_at", UTCDateTime(), nullable=True),
        sa.Column("token_issued_at", UTCDateTime(), nullable=True),
        sa.Column("max_samples", sa.Integer(), nullable=True),
        sa.Column("accept_policy", sa.JSON(), nullable=True),
    )
    sa.Table(
        "consents",
        metadata,
        sa.Column(
            "experiment_id", sa.String(length=32), sa.ForeignKey("experiments.id"), primary_key=True
        ),
        sa.Column("site_id", sa.String(length=32), sa.ForeignKey("sites.id"), primary_key=True),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("decided_at", UTCDateTime(), nullable=False),
    )
    sa.Table(
        "events",
        metadata,
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(length=80), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column(
            "experiment_id",
            sa.String(length=32),
            sa.ForeignKey("experiments.id"),
            nullable=True,
            index=True,
        ),
        sa.Column("detail", sa.JSON(), nullable=False),
    )
    sa.Table(
        "experiment_plans",
        metadata,
        sa.Column(
            "experiment_id", sa.String(length=32), sa.ForeignKey("experiments.id"), primary_key=True
        ),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    sa.Table(
        "global_models",
        metadata,
        sa.Column(
            "experiment_id", sa.String(length=32), sa.ForeignKey("experiments.id"), primary_key=True
        ),
        sa.Column("round", sa.Integer(), primary_key=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("f16_sha256", sa.String(length=64), nullable=True),
        sa.Column("f16_size", sa.Integer(), nullable=True),
        sa.Column("state_sha256", sa.String(length=64), nullable=True),
        sa.Column("num_updates", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    sa.Table(
        "grants",
        metadata,
        sa.Column(
            "experiment_id", sa.String(length=32), sa.ForeignKey("experiments.id"), primary_key=True
        ),
        sa.Column("site_id", sa.String(length=32), sa.ForeignKey("sites.id"), primary_key=True),
        sa.Column(
            "granted_by", sa.String(length=32), sa.ForeignKey("researchers.id"), nullable=False
        ),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    sa.Table(
        "personal_models",
        metadata,
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "experiment_id",
            sa.String(length=32),
            sa.ForeignKey("experiments.id"),
            nullable=False,
            index=True,
        ),
        sa.Column("site_id", sa.String(length=32), sa.ForeignKey("sites.id"), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("experiment_id", "site_id", "round"),
    )
    sa.Table(
        "rounds",
        metadata,
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column(
            "experiment_id",
            sa.String(length=32),
            sa.ForeignKey("experiments.id"),
            nullable=False,
            index=True,
        ),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("sampled", sa.JSON(), nullable=False),
        sa.Column("opened_at", UTCDateTime(), nullable=False),
        sa.Column("deadline_at", UTCDateTime(), nullable=False),
        sa.Column("closed_at", UTCDateTime(), nullable=True),
        sa.Column("reason", sa.String(length=1000), nullable=True),
        sa.Column("aggregating_at", UTCDateTime(), nullable=True),
        sa.Column("aggregate_seconds", sa.Double(), nullable=True),
        sa.UniqueConstraint("experiment_id", "number", "attempt"),
    )
    sa.Table(
        "site_fingerprints",
        metadata,
        sa.Column("site_id", sa.String(length=32), sa.ForeignKey("sites.id"), primary_key=True),
        sa.Column("fingerprint", sa.JSON(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    sa.Table(
        "secagg_sums",
        metadata,
        sa.Column("round_id", sa.String(length=32), sa.ForeignKey("rounds.id"), primary_key=True),
        sa.Column("sum_sha256", sa.String(length=64), nullable=False),
        sa.Column("uploads", sa.Integer(), nullable=False),
        sa.Column("unmask_started_at", UTCDateTime(), nullable=True),
    )
    sa.Table(
        "tasks",
        metadata,
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column(
            "round_id", sa.String(length=32), sa.ForeignKey("rounds.id"), nullable=False, index=True
        ),
        sa.Column(
            "experiment_id", sa.String(length=32), sa.ForeignKey("experiments.id"), nullable=False
        ),
        sa.Column("site_id", sa.String(length=32), sa.ForeignKey("sites.id"), nullable=False),
        sa.Column("round_number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("model_sha256", sa.String(length=64), nullable=False),
        sa.Column("model_size", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.Column("bytes_down", sa.Integer(), nullable=False),
        sa.Column("bytes_up", sa.Integer(), nullable=False),
        sa.Column("update_sha256", sa.String(length=64), nullable=True),
        sa.Column("update_blob_sha256", sa.String(length=64), nullable=True),
        sa.Column("num_samples", sa.Integer(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("reject_reason", sa.String(length=1000), nullable=True),
        sa.Column("failure_reason", sa.String(length=1000), nullable=True),
        sa.Column("reported_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("round_id", "site_id"),
        sa.Index("ix_tasks_site_status", "site_id", "status"),
    )
    sa.Table(
        "secagg_entries",
        metadata,
        sa.Column("task_id", sa.String(length=32), sa.ForeignKey("tasks.id"), primary_key=True),
        sa.Column(
            "round_id", sa.String(length=32), sa.ForeignKey("rounds.id"), nullable=False, index=True
        ),
        sa.Column("site_index", sa.Integer(), nullable=False),
        sa.Column("c_public", sa.String(length=64), nullable=False),
        sa.Column("s_public", sa.String(length=64), nullable=False),
        sa.Column("shares", sa.JSON(), nullable=True),
        sa.Column("masked", sa.Boolean(), nullable=False),
        sa.Column("unmask", sa.JSON(), nullable=True),
    )

    return metadata


def upgrade() -> None:
    fill_missing(op.get_bind(), baseline())


def downgrade() -> None:
    baseline().drop_all(op.get_bind())
