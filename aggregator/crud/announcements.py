"""Announcements to every aggregator process sharing a PostgreSQL database (``NOTIFY``).

Several processes may serve one PostgreSQL database. What one of them commits, the others must
sometimes hear of at once: a revoked token (their caches of token answers) and new tasks (their
waiting long polls). ``announce`` queues a ``NOTIFY`` in the session's transaction: PostgreSQL
delivers it to every listening connection when the transaction commits, and never if it rolls
back. ``aggregator.api.announcements`` listens. On SQLite (one process) it does nothing.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

TOKENS_CHANNEL = "fedseg_tokens"
"""A token was issued, rotated or revoked: forget every token answer kept in memory."""

TASKS_CHANNEL = "fedseg_tasks"
"""Tasks appeared (a round opened, an experiment resumed): waiting sites look again."""


def announce(session: Session, channel: str) -> None:
    """Announce on ``channel`` when the session's transaction commits (PostgreSQL only).

    Args:
        session: the session whose commit makes the change.
        channel: ``TOKENS_CHANNEL`` or ``TASKS_CHANNEL``.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_notify(channel, "")))
