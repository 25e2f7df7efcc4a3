"""Which aggregator process drives the rounds: the holder of a PostgreSQL advisory lock.

Several processes may serve one PostgreSQL database (and one shared blob folder). Each answers
the API; only the leader runs the orchestrator loop. Leadership is a session-level
``pg_try_advisory_lock`` held on a connection kept open for that purpose: when the leader dies
(even by ``kill -9``) its connection closes, PostgreSQL releases the lock, and the next process
to try takes it and carries on from the database, as a restarted single process would (the
orchestrator keeps all round state in the database, and its transitions are conditional
updates, so a round is never aggregated into two different models).

Followers cannot hear the leader's in-process wake-ups. They hear its announcement of new tasks
instead (``aggregator.api.announcements``) and wake their long-polling sites then. While that
announcement cannot be heard (no listening connection), they wake them every ``interval_s`` to
look for a task in the database again, as they always did; while it can, only every
``FOLLOWER_SAFETY_TICKS`` ticks, in case a task ever appears without one.

SQLite has one process by design: there the process always leads and this module stays out of
the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from aggregator.logs import log_event
from aggregator.rounds.task_board import TaskBoard
from aggregator.storage.db import Database

log = logging.getLogger("aggregator.leadership")
# pg_advisory_lock key of the round leader ("fedseg" + "lead" as bytes, within int64).
LEADER_LOCK_KEY = 0x666564736C6561
# A follower that hears new tasks announced still wakes its waiting sites every this many ticks.
FOLLOWER_SAFETY_TICKS = 10


class Leadership:
    """The round leader's lock, tried and kept by ``hold``.

    Args:
        database: the aggregator's database; leadership is contested only on PostgreSQL.
        key: the advisory lock key. Default ``LEADER_LOCK_KEY`` (tests pass their own).
    """

    def __init__(self, database: Database, *, key: int = LEADER_LOCK_KEY) -> None:
        self._db = database
        self._key = key
        self._conn: Connection | None = None
        self.contested = database.engine.dialect.name == "postgresql"

    @property
    def is_leader(self) -> bool:
        """Whether this process held the lock at the last ``hold``."""
        return not self.contested or self._conn is not None

    def hold(self) -> bool:
        """Keep the lock if held and the connection is alive, else try to take it (blocking I/O).

        Returns:
            True while this process leads.
        """
        if not self.contested:
            return True
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT 1"))
                self._conn.commit()
                return True
            except SQLAlchemyError:
                self.release()  # connection lost: so is the lock, another process may lead
                return False
        try:
            conn = self._db.engine.connect()
        except SQLAlchemyError:
            return False
        try:
            got = bool(
                conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key}).scalar()
            )
            conn.commit()
        except SQLAlchemyError:
            got = False
        if got:
            self._conn = conn
        else:
            conn.close()
        return got

    def release(self) -> None:
        """Give the lock up (closing its connection releases it on the server)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                conn.invalidate()  # never back into the pool with a session lock on it
                conn.close()


async def lead_rounds(
    leadership: Leadership,
    board: TaskBoard,
    run_rounds: Callable[[], Coroutine[Any, Any, None]],
    *,
    interval_s: float,
    tasks_heard: Callable[[], bool] = lambda: False,
) -> None:
    """Run ``run_rounds`` (the orchestrator loop) while this process leads; forever.

    Args:
        leadership: the lock.
        board: the long-poll board, woken every ``interval_s`` while following.
        run_rounds: starts the orchestrator loop. Example: ``lambda: orchestrator.run(board)``.
        interval_s: how often the lock is checked or tried.
        tasks_heard: whether new tasks announced by the leader are heard now (then a follower
            wakes its waiting sites only every ``FOLLOWER_SAFETY_TICKS`` ticks). Default: never.
    """
    if not leadership.contested:
        await run_rounds()
        return
    rounds: asyncio.Task[None] | None = None
    ticks = 0
    try:
        while True:
            ticks += 1
            leading = await anyio.to_thread.run_sync(leadership.hold)
            if leading and rounds is None:
                log_event(log, "leader.acquired")
                rounds = asyncio.create_task(run_rounds(), name="orchestrator")
            elif not leading:
                if rounds is not None:
                    log_event(log, "leader.lost")
                    await _cancel(rounds)
                    rounds = None
                if not tasks_heard() or ticks % FOLLOWER_SAFETY_TICKS == 0:
                    board.notify(board.waiting_sites())
            await asyncio.sleep(interval_s)
    finally:
        if rounds is not None:
            await _cancel(rounds)
        await anyio.to_thread.run_sync(leadership.release)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
