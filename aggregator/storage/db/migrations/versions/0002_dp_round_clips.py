"""Adaptive clipping: the clip norm of each round of a DP experiment (``dp_round_clips``).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database made by ``create_all`` before alembic (stamped at 0001) may hold it already.
    if sa.inspect(op.get_bind()).has_table("dp_round_clips"):
        return
    op.create_table(
        "dp_round_clips",
        sa.Column(
            "experiment_id", sa.String(length=32), sa.ForeignKey("experiments.id"), primary_key=True
        ),
        sa.Column("round_number", sa.Integer(), primary_key=True),
        sa.Column("clip_norm", sa.Double(), nullable=False),
        sa.Column("unclipped_share", sa.Double(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("dp_round_clips")
