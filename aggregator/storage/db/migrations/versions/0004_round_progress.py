"""Each round attempt counts its unreported tasks in a row of its own (``round_progress``).

Each upload asked how many of its round's tasks were still open, to wake the orchestrator
after the round's last one. On PostgreSQL that was a count over the round's N tasks in every
upload's statement, O(N²) per round. Now each report lowers its round's row by one, and the one
that reaches 0 wakes the orchestrator. Rounds that exist already get their row, counted from
their tasks that have not reported.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if not sa.inspect(bind).has_table("round_progress"):
        op.create_table(
            "round_progress",
            sa.Column(
                "round_id", sa.String(length=32), sa.ForeignKey("rounds.id"), primary_key=True
            ),
            sa.Column("unreported", sa.Integer(), nullable=False),
        )
    tasks = sa.table("tasks", sa.column("round_id"), sa.column("reported_at"))
    rounds = sa.table("rounds", sa.column("id"))
    progress = sa.table("round_progress", sa.column("round_id"), sa.column("unreported"))
    unreported = (
        sa.select(sa.func.count())
        .select_from(tasks)
        .where(tasks.c.round_id == rounds.c.id, tasks.c.reported_at.is_(None))
        .scalar_subquery()
    )
    have = sa.select(progress.c.round_id)
    bind.execute(
        progress.insert().from_select(
            ["round_id", "unreported"],
            sa.select(rounds.c.id, unreported).where(rounds.c.id.not_in(have)),
        )
    )


def downgrade() -> None:
    op.drop_table("round_progress")
