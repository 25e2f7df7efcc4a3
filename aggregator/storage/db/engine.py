"""Engine and sessions: SQLite with WAL, foreign keys and a busy timeout; other URLs as given."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from aggregator.storage.db import idle_ping
from aggregator.storage.db.relaxed import install_reset
from aggregator.storage.db.sqlite_writer import apply_pragmas, connection_class

INSERT_PAGE_ROWS = 100
"""Rows per multi-row INSERT statement (SQLAlchemy's default is 1,000)."""


class Database:
    """One engine plus a session factory; created by the app factory and injected.

    Args:
        url: SQLAlchemy URL. Example: ``"sqlite:////tmp/agg/aggregator.db"``.
        synchronous: SQLite ``synchronous`` pragma, ``FULL`` or ``NORMAL``. Default ``FULL``.
    """

    def __init__(self, url: str, *, synchronous: str = "FULL") -> None:
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.sqlite_path: str | None = (
            parsed.database
            if self.is_sqlite and parsed.database and parsed.database != ":memory:"
            else None
        )
        """The SQLite database file; None for an in-memory database or another backend."""
        self.synchronous = synchronous
        """SQLite's ``synchronous`` pragma on every connection that writes."""
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # Long polls and uploads release their connection early, but many sites may sit in
            # request handlers at once: a roomy pool rather than the default 5 + 10.
            connect_args: dict[str, Any] = {"check_same_thread": False, "timeout": 30}
            if parsed.database and parsed.database != ":memory:":
                # one writer at a time inside the process, woken at once (sqlite_writer)
                connect_args["factory"] = connection_class(parsed.database, timeout_s=30)
            kwargs.update(connect_args=connect_args, pool_size=16, max_overflow=48)
        else:
            # As many connections as anyio's 40 worker threads can use at once, the most recent
            # first (a busy pool reuses a few warm ones). A connection back from a quiet spell
            # is pinged first (idle_ping), so that one a database restart or failover closed is
            # replaced instead of failing a request.
            kwargs.update(pool_size=10, max_overflow=30, pool_use_lifo=True)
        # Drivers keep prepared statements per connection (sqlite3 up to 128, psycopg those run
        # five times): a round's tasks go in pages of 100 rows (on SQLite a 230 KiB statement),
        # not one 1,000-row insert of 2.2 MiB whose size grows with the sites (id_lists).
        kwargs.update(insertmanyvalues_page_size=INSERT_PAGE_ROWS)
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            _install_sqlite_pragmas(self.engine, synchronous)
        else:
            idle_ping.install(self.engine)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        # Reads of a site's per-round requests: on PostgreSQL without a transaction around them
        # (no BEGIN and COMMIT round trips; in READ COMMITTED each statement reads its own
        # snapshot either way). SQLite's sessions are already cheap.
        self._read_factory = (
            self._factory
            if self.is_sqlite
            else sessionmaker(
                self.engine.execution_options(isolation_level="AUTOCOMMIT"),
                expire_on_commit=False,
            )
        )

    @property
    def session_factory(self) -> sessionmaker[Session]:
        """The factory behind ``session`` (for session event listeners)."""
        return self._factory

    def upgrade(self) -> str:
        """Migrate the schema to this release's head revision (alembic); returns the revision.

        A database already at the head, or an empty SQLite one, is done without importing
        alembic (``aggregator.storage.db.schema_fast``).
        """
        from aggregator.storage.db.schema_fast import fast_upgrade

        if (head := fast_upgrade(self.engine)) is not None:
            return head
        from aggregator.storage.db.migrate import upgrade_database

        return upgrade_database(self.engine)

    def create_all(self) -> None:
        """The name start-up code used before migrations: now the same as ``upgrade``."""
        self.upgrade()

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session that rolls back on error and is always closed."""
        session = self._factory()
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextlib.contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for reads only; on PostgreSQL each statement commits by itself (autocommit).

        For the short look-ups of a site's poll, download and upload: two socket round trips
        fewer per request on PostgreSQL. Nothing that writes belongs here: a write would commit
        at once, alone.
        """
        session = self._read_factory()
        try:
            yield session
        finally:
            session.close()

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()


def _install_sqlite_pragmas(engine: Engine, synchronous: str) -> None:
    if synchronous not in {"FULL", "NORMAL"}:
        raise ValueError(f"sqlite synchronous must be FULL or NORMAL, got {synchronous!r}")
    install_reset(engine, synchronous)  # after a relaxed commit (aggregator.storage.db.relaxed)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        apply_pragmas(dbapi_connection, synchronous)


def database_problem(exc: BaseException) -> str:
    """One line on why a database could not be opened, without the URL (it may hold a password)."""
    cause = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0] if lines else 'no detail'}"[:300]
