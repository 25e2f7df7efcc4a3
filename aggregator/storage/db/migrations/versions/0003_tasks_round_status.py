"""Tasks are indexed by round and status (``ix_tasks_round_status``), not by round alone.

Whether a round still has open tasks is asked after every upload on SQLite. With an index on
the round alone, each ask read every task of the round: O(N²) rows per round of N sites. The new
index finds a round's open tasks without the others, and serves lookups by round alone as well,
so ``ix_tasks_round_id`` goes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _indexes() -> set[str]:
    return {str(index["name"]) for index in sa.inspect(op.get_bind()).get_indexes("tasks")}


def upgrade() -> None:
    present = _indexes()
    if "ix_tasks_round_status" not in present:
        op.create_index("ix_tasks_round_status", "tasks", ["round_id", "status"])
    if "ix_tasks_round_id" in present:
        op.drop_index("ix_tasks_round_id", table_name="tasks")


def downgrade() -> None:
    op.create_index("ix_tasks_round_id", "tasks", ["round_id"])
    op.drop_index("ix_tasks_round_status", table_name="tasks")
