"""A site's per-round look-ups on SQLite, on plain ``sqlite3`` connections of the event loop's thread.

On SQLite a site's poll and upload check already read on the event loop (a read in WAL mode
never waits for the writer). But each went through a SQLAlchemy session: a pooled connection
checked out and back (with its rollback), a transaction object, a result object. At a thousand
sites the event loop's thread was the aggregator's bottleneck (busy in 96 % of its samples), and
those reads were 62 % of it, most of that SQLAlchemy's own work around one indexed ``SELECT``
(``benchmarks/results/scale.md``, section R).

``SqliteReads`` is the counterpart of ``AsyncReads`` (PostgreSQL) with the same ``one``: the
module's prepared Core statements (``aggregator.crud.site_requests``) are compiled once to
SQLite's SQL with named parameters, their constants passed through the columns' bind
processors, and run on a ``sqlite3`` connection that each thread opens for itself (autocommit,
``query_only``): every statement reads the latest committed state, as a fresh session does.
Each value comes back through its column's result processor, so a ``UTCDateTime`` column gives
the aware UTC datetime the ORM gives.

Only reads go here, and only on a database file (an in-memory database is private to the
connection that made it: there the caller keeps its sessions).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.sql import Select

BUSY_TIMEOUT_MS = 30_000  # as the engine's connections: a checkpoint may hold a reader briefly

Processor = Callable[[Any], Any]


@dataclass(frozen=True)
class SqliteStatement:
    """A Core statement compiled once for ``sqlite3`` (``compile_for_sqlite``)."""

    sql: str
    constants: dict[str, Any]  # already through their bind processors
    binds: dict[str, Processor]  # the caller's parameters that need one
    names: tuple[str, ...]
    results: tuple[Processor | None, ...]


class ThreadConnections:
    """A ``sqlite3`` connection for each thread, opened by ``connect`` at the thread's first
    ``get``; ``close`` ends them all.

    ``connect`` opens with ``check_same_thread=False`` only so that ``close`` may run on
    another thread: each connection is used by the thread that opened it.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def get(self) -> sqlite3.Connection:
        """The calling thread's connection."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            with self._lock:
                self._opened.append(conn)
            self._local.conn = conn
        return conn

    @property
    def opened(self) -> int:
        """Connections open now."""
        return len(self._opened)

    def close(self) -> None:
        """Close every thread's connection; a later ``get`` opens a new one."""
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()
        self._local = threading.local()


class SqliteReads:
    """One-row reads on per-thread ``sqlite3`` connections (autocommit, read-only).

    Args:
        path: the database file (as in the engine's URL).

    Example::

        reads = SqliteReads("/var/lib/fedseg/aggregator.db")
        row = await reads.one(site_requests.NEXT_TASK, {"site_id": site_id})
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._dialect = SQLiteDialect_pysqlite(paramstyle="named")
        self._compiled: dict[int, SqliteStatement] = {}
        self._connections = ThreadConnections(self._open)

    async def one(self, statement: Select[Any], params: dict[str, Any]) -> dict[str, Any] | None:
        """The first row of ``statement`` with ``params`` as a dict, or None.

        Runs at once on the calling thread (the event loop's): a few indexed rows of a WAL
        database, which cost less than a hand-over to a worker thread.

        Raises:
            sqlite3.Error: the database refused it (or the statement is wrong).
        """
        compiled = self._compile(statement)
        values = dict(compiled.constants)
        for name, value in params.items():
            process = compiled.binds.get(name)
            values[name] = value if process is None or value is None else process(value)
        row = self._connection().execute(compiled.sql, values).fetchone()
        if row is None:
            return None
        return {
            name: value if process is None else process(value)
            for name, value, process in zip(compiled.names, row, compiled.results, strict=True)
        }

    @property
    def opened(self) -> int:
        """Connections open now (one per thread that has read)."""
        return self._connections.opened

    async def close(self) -> None:
        """Close every thread's connection (the app's shutdown)."""
        self._connections.close()

    def _connection(self) -> sqlite3.Connection:
        return self._connections.get()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path,
            isolation_level=None,
            check_same_thread=False,  # see ThreadConnections
            timeout=BUSY_TIMEOUT_MS / 1000,
        )
        conn.execute("PRAGMA query_only=ON")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return conn

    def _compile(self, statement: Select[Any]) -> SqliteStatement:
        found = self._compiled.get(id(statement))
        if found is None:
            found = compile_for_sqlite(statement, self._dialect)
            self._compiled[id(statement)] = found
        return found


def compile_for_sqlite(statement: Any, dialect: SQLiteDialect_pysqlite) -> SqliteStatement:
    """A Core statement as SQLite's SQL with named parameters, with its constants already
    through their bind processors, the processors the caller's parameters need, and its result
    columns (a ``SELECT``'s, or a write's ``RETURNING``) with their result processors.

    Raises:
        ValueError: two result columns share a name, or one has none.
    """
    compiled = statement.compile(dialect=dialect)
    binds: dict[str, Processor] = {}
    for name, bind in compiled.binds.items():
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            binds[name] = process
    constants = {  # the statement's own values; the caller's are ``required``
        name: value if value is None or name not in binds else binds[name](value)
        for name, value in compiled.params.items()
        if not compiled.binds[name].required
    }
    columns = list(statement.exported_columns)
    names = tuple(column.key for column in columns)
    if None in names or len(set(names)) != len(names):
        raise ValueError(f"every selected column needs a name of its own, got {names}")
    return SqliteStatement(
        sql=str(compiled),
        constants=constants,
        binds=binds,
        names=cast(tuple[str, ...], names),
        results=tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        ),
    )
