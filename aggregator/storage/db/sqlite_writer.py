"""One SQLite writer at a time inside the process, handed over on a lock instead of by polling.

SQLite lets one connection write at a time. When a second connection's write finds the lock
taken, SQLite's busy handler *sleeps* and tries again: 1, 2, 5, 10, 15, 20, 25 … 100 ms. With a
thousand sites uploading, the aggregator's worker threads each write a few times per request,
collide constantly, and spend the round asleep while the writer lock sits free: a profile of a
1,000-site round found about seven such sleeps per site (2.3 ms each).

``SerializedWriteConnection`` is the ``sqlite3`` connection class the engine connects with. A
connection takes an in-process lock, shared by every connection of this process to the same
file, just before the statement that begins its write (``INSERT``, ``UPDATE``, ``DELETE``,
``REPLACE``, DDL or an explicit ``BEGIN``), and gives it back as soon as the connection is no
longer in a transaction: after its commit or rollback (SQLite's own write lock is released
there too). The next writer is woken the moment the lock is free. Reads never take it: WAL
readers do not block writers.

What does not change: SQLite still arbitrates between processes (a CLI or a second aggregator
on the same file) with its busy timeout, and a writer that cannot get the in-process lock
within that timeout fails with the same ``database is locked`` error SQLite would raise.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

_WRITE_VERBS = ("INSERT", "UPDATE", "DELETE", "REPLACE", "BEGIN", "CREATE", "DROP", "ALTER")

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def writer_lock(database: str) -> threading.Lock:
    """The process-wide writer lock of one database file (by its resolved path)."""
    key = str(Path(database).resolve())
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def apply_pragmas(conn: sqlite3.Connection, synchronous: str) -> None:
    """The pragmas of every connection the aggregator writes with: WAL, foreign keys, the
    configured ``synchronous`` (``FULL`` or ``NORMAL``) and a 30 s busy timeout."""
    cursor = conn.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA busy_timeout=30000")
    finally:
        cursor.close()


def starts_write(sql: str) -> bool:
    """Whether a statement outside a write begins one (SQLite's write lock is taken there)."""
    return sql.lstrip()[:7].upper().startswith(_WRITE_VERBS)


def connection_class(database: str, *, timeout_s: float) -> type[sqlite3.Connection]:
    """A ``sqlite3.Connection`` subclass whose writes share ``writer_lock(database)``.

    Args:
        database: the database file's path (not ``:memory:``: those are private per connection).
        timeout_s: how long a writer waits for the lock before failing like SQLite's busy
            timeout (``sqlite3.OperationalError: database is locked``).
    """
    lock = writer_lock(database)

    class _Connection(SerializedWriteConnection):
        _writer_lock = lock
        _writer_timeout_s = timeout_s

    return _Connection


class SerializedWriteConnection(sqlite3.Connection):
    """A connection that holds the process's writer lock from its first write to its commit."""

    _writer_lock: threading.Lock = threading.Lock()
    _writer_timeout_s: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._holding = False

    def take_writer_lock(self, sql: str) -> None:
        """Take the lock before ``sql`` when it begins a write (no-op when already held)."""
        if self._holding or not starts_write(sql):
            return
        if not self._writer_lock.acquire(timeout=self._writer_timeout_s):
            raise sqlite3.OperationalError("database is locked")
        self._holding = True

    def settle_writer_lock(self) -> None:
        """Give the lock back once the connection is out of its transaction."""
        if self._holding and not self.in_transaction:
            self._holding = False
            self._writer_lock.release()

    def cursor(self, factory: Any = None) -> sqlite3.Cursor:  # type: ignore[override]
        """Cursors that take the lock before a write (SQLAlchemy executes through cursors)."""
        return super().cursor(factory or _Cursor)

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        """``Connection.execute`` through a locking cursor."""
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        """``Connection.executemany`` through a locking cursor."""
        return self.cursor().executemany(sql, parameters)

    def executescript(self, script: str, /) -> sqlite3.Cursor:
        """``Connection.executescript`` through a locking cursor."""
        return self.cursor().executescript(script)

    def commit(self) -> None:
        """Commit, then hand the lock to the next writer."""
        self._guarded(super().commit)

    def rollback(self) -> None:
        """Roll back, then hand the lock to the next writer."""
        self._guarded(super().rollback)

    def close(self) -> None:
        """Close (SQLite rolls back an open write), then hand the lock on."""
        try:
            super().close()
        finally:
            if self._holding:
                self._holding = False
                self._writer_lock.release()

    def _guarded(self, call: Callable[[], None]) -> None:
        try:
            call()
        finally:
            self.settle_writer_lock()


class _Cursor(sqlite3.Cursor):
    """A cursor of a ``SerializedWriteConnection``."""

    def execute(self, sql: str, parameters: Any = (), /) -> Self:
        """Take the writer lock first when ``sql`` begins a write."""
        conn: SerializedWriteConnection = self.connection  # type: ignore[assignment]
        conn.take_writer_lock(sql)
        try:
            return super().execute(sql, parameters)
        finally:
            conn.settle_writer_lock()  # a failed first write leaves no transaction open

    def executemany(self, sql: str, parameters: Any, /) -> Self:
        """Take the writer lock first when ``sql`` begins a write."""
        conn: SerializedWriteConnection = self.connection  # type: ignore[assignment]
        conn.take_writer_lock(sql)
        try:
            return super().executemany(sql, parameters)
        finally:
            conn.settle_writer_lock()

    def executescript(self, script: str, /) -> sqlite3.Cursor:
        """A script may write anywhere: hold the lock for it."""
        conn: SerializedWriteConnection = self.connection  # type: ignore[assignment]
        conn.take_writer_lock("BEGIN")
        try:
            return super().executescript(script)
        finally:
            conn.settle_writer_lock()
