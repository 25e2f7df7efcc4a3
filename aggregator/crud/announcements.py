"""Announcements to every aggregator process sharing a PostgreSQL database (``NOTIFY``).

Several processes may serve one PostgreSQL database. What one of them commits, the others must
sometimes hear of at once: a revoked token (their caches of token answers), new tasks (their
waiting long polls) and a round's last report (the leader's orchestrator). ``announce`` queues a ``NOTIFY`` in the session's transaction: PostgreSQL
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

ROUNDS_CHANNEL = "fedseg_rounds"
"""A round's last unreported task reported: the leader's orchestrator steps now, not at its
next tick, whichever process took the report (``crud.site_requests``)."""


def announce(session: Session, channel: str) -> None:
    """Announce on ``channel`` when the session's transaction commits (PostgreSQL only).

    Args:
        session: the session whose commit makes the change.
        channel: ``TOKENS_CHANNEL``, ``TASKS_CHANNEL`` or ``ROUNDS_CHANNEL``.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_notify(channel, "")))
