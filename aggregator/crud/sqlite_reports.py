"""A site's upload report on SQLite, written on a plain ``sqlite3`` connection without a session.

At a thousand sites an upload's report is the aggregator's most frequent write: the task's
compare-and-set, its round's count-down and the audit event, then a commit. Through a
SQLAlchemy session the Python around those three indexed statements (the session, the pooled
connection's checkout and return, the execution contexts, the transaction objects) held the GIL
about as long as the event loop held it in a profile of a 1,000-site round
(``benchmarks/results/scale.md``, section T), and the event loop, which sets a round's pace,
waited for it.

``SqliteReports.record`` writes what ``intake.accept_update`` wrote through a session, the
same compiled Core statements (``aggregator.crud.site_requests``) with their bind processors,
in one transaction on a connection of the calling thread, and commits before it returns.

- The connection's class is the engine's (``sqlite_writer.connection_class``): its
  ``BEGIN IMMEDIATE`` takes the process's one writer lock, as every session's first write does,
  and gives it back at the commit or rollback.
- Its pragmas are the engine's (``sqlite_writer.apply_pragmas``): WAL, foreign keys, the busy
  timeout, and the configured ``synchronous`` (``FULL`` by default), so the report is as
  durable on return as a session's commit made it.

Only a database file (an in-memory database is private to the connection that made it).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

from aggregator.crud import site_requests
from aggregator.storage.db.sqlite_reads import (
    SqliteStatement,
    ThreadConnections,
    compile_for_sqlite,
)
from aggregator.storage.db.sqlite_writer import apply_pragmas, connection_class

BUSY_TIMEOUT_S = 30.0  # as the engine's connections


class SqliteReports:
    """Upload reports on per-thread ``sqlite3`` connections, each in its own transaction.

    Args:
        path: the database file (as in the engine's URL).
        synchronous: the engine's ``synchronous`` pragma, ``FULL`` or ``NORMAL``.

    Example::

        reports = SqliteReports("/var/lib/fedseg/aggregator.db", synchronous="FULL")
        done = reports.record(task_id=..., status=TaskStatus.ACCEPTED, now=utcnow(),
                              values={...}, event={...})
    """

    def __init__(self, path: str, *, synchronous: str) -> None:
        self._path = path
        self._synchronous = synchronous
        self._factory = connection_class(path, timeout_s=BUSY_TIMEOUT_S)
        self._dialect = SQLiteDialect_pysqlite(paramstyle="named")
        self._statements: dict[Any, SqliteStatement] = {}
        self._connections = ThreadConnections(self._open)

    def record(
        self,
        *,
        task_id: str,
        status: str,
        now: datetime,
        values: dict[str, Any],
        event: dict[str, Any],
    ) -> site_requests.Recorded:
        """Report on an open task of an open round, count its round down and log ``event``.

        ``site_requests.record_report`` followed by ``insert_event`` and the commit, as one
        transaction: all or nothing is stored, and what is stored is durable on return. A
        report that finds its task no longer open writes nothing (``won`` False).

        Args:
            status: the task's new status (``TaskStatus``).
            values: the task's columns to set. Example: ``{"reject_reason": "norm"}``.
            event: the event's ``kind``, ``actor``, ``experiment_id`` and ``detail``.

        Raises:
            sqlite3.Error: the database refused it (nothing is stored).
        """
        keys = tuple(sorted(values))
        report = self._statement(("report", keys), lambda: site_requests.report_update(keys))
        count_down = self._statement("count_down", lambda: site_requests.COUNT_DOWN)
        log = self._statement("event", lambda: site_requests.INSERT_EVENT_ROW)
        params = {"task_id": task_id, "new_status": status, "now": now}
        params |= {f"v_{key}": value for key, value in values.items()}
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")  # the process's writer lock, then SQLite's
        try:
            if not conn.execute(report.sql, _bound(report, params)).rowcount:
                conn.rollback()
                return site_requests.Recorded(won=False, unreported=None)
            rows = conn.execute(count_down.sql, _bound(count_down, {"task_id": task_id})).fetchall()
            conn.execute(log.sql, _bound(log, site_requests.event_row(event)))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        return site_requests.Recorded(won=True, unreported=rows[0][0] if rows else None)

    @property
    def opened(self) -> int:
        """Connections open now (one per thread that has reported)."""
        return self._connections.opened

    def close(self) -> None:
        """Close every thread's connection (the app's shutdown)."""
        self._connections.close()

    def _connection(self) -> sqlite3.Connection:
        return self._connections.get()

    def _open(self) -> sqlite3.Connection:
        # Autocommit mode: the transactions are ``record``'s own BEGIN and COMMIT.
        conn = sqlite3.connect(
            self._path,
            isolation_level=None,
            check_same_thread=False,  # see ThreadConnections
            timeout=BUSY_TIMEOUT_S,
            factory=self._factory,
        )
        apply_pragmas(conn, self._synchronous)
        return conn

    def _statement(self, key: Any, build: Callable[[], Any]) -> SqliteStatement:
        found = self._statements.get(key)
        if found is None:
            found = compile_for_sqlite(build(), self._dialect)
            self._statements[key] = found
        return found


def _bound(statement: SqliteStatement, params: dict[str, Any]) -> dict[str, Any]:
    """The statement's constants and ``params``, each through its column's bind processor (a
    ``None`` too: a JSON column stores it as JSON ``null``, as a session's write does)."""
    values = dict(statement.constants)
    for name, value in params.items():
        process = statement.binds.get(name)
        values[name] = value if process is None else process(value)
    return values
