"""Commits that need not wait for the disk: bookkeeping on the round's critical path.

The aggregator runs SQLite in WAL mode with ``synchronous=FULL``: every commit waits for an
fsync of the WAL (5 ms median, tens of ms under I/O load). That is right for what a site or a
researcher is told is stored (an accepted update, a closed round), but a round boundary also
commits records whose loss in a *power cut* is harmless: a task's first delivery
(``delivered_at``; the site simply gets the task again) and the bytes served per task. Five
sites make ten such commits per round, one after the other on SQLite's writer lock.

``relax_next_commit(session)`` switches the session's connection to ``synchronous=NORMAL``
before its write begins: the commit is still atomic, and durable against a killed process (the
WAL is written before the commit returns; only its fsync is left to the next ``FULL`` commit
or checkpoint). ``install_reset`` puts the configured level back when the connection returns
to the pool. SQLite refuses the switch inside a write transaction, so a session that already
wrote keeps its full commit.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

_RELAXED = "fedseg_relaxed_commit"


def relax_next_commit(session: Session) -> bool:
    """Let the session's next commit skip the fsync (SQLite only; call before any write).

    Args:
        session: an open session that has not written yet in this transaction.

    Returns:
        True when relaxed; False for other databases or when a write already began (the
        commit then stays fully durable).
    """
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        return False
    dbapi = connection.connection.dbapi_connection
    if dbapi is None or getattr(dbapi, "in_transaction", True):
        return False
    connection.exec_driver_sql("PRAGMA synchronous=NORMAL")
    connection.info[_RELAXED] = True
    return True


def install_reset(engine: Engine, synchronous: str) -> None:
    """Restore ``synchronous`` on every connection a relaxed commit used, at pool check-in."""

    @event.listens_for(engine, "checkin")
    def _reset(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is None or not record.info.pop(_RELAXED, False):
            return
        try:
            dbapi_connection.execute(f"PRAGMA synchronous={synchronous}")
        except Exception:  # never hand out a connection left at NORMAL: drop it instead
            record.invalidate()
