"""The schema's two common start-ups without alembic: a SQLite database at the head, or empty.

Importing alembic and running its migrations costs the aggregator about a tenth of a CPU second
at every start, before any site can register. Two start-ups need none of it:

- **a SQLite database already at the shipped head** (every restart): only the safety net of
  ``migrate.upgrade_database`` runs (tables and nullable columns the models gained without a
  revision, with the same warning);
- **an empty SQLite database** (a new federation): ``create_all`` of the models plus an
  ``alembic_version`` row at the head, in one ``BEGIN IMMEDIATE`` transaction. The models and the
  migrations produce the same ``CREATE`` statements, byte for byte
  (``tests/aggregator/test_schema_fast.py`` compares them), so the file is the one the
  migrations would have made.

Everything else (an older revision, a pre-alembic database, and every PostgreSQL database, where
concurrent start-ups serialise on the advisory lock) goes through alembic as before:
``fast_upgrade`` returns None.
"""

from __future__ import annotations

import logging
import re
from functools import cache
from pathlib import Path

from sqlalchemy import Column, MetaData, PrimaryKeyConstraint, String, Table, inspect, text
from sqlalchemy.engine import Connection, Engine

from aggregator.logs import log_event
from aggregator.storage.db.models import Base
from aggregator.storage.db.schema_fill import fill_missing

log = logging.getLogger("aggregator.storage.db")
VERSIONS = Path(__file__).resolve().parent / "migrations" / "versions"
_REVISION = re.compile(r"^revision\s*=\s*['\"]([^'\"]+)['\"]", re.M)
_DOWN = re.compile(r"^down_revision\s*=\s*(?:['\"]([^'\"]+)['\"]|None)", re.M)
_VERSION_TABLE = Table(  # as alembic's MigrationContext creates it
    "alembic_version",
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)


@cache
def shipped_head() -> str:
    """The head revision of the migrations shipped with this release, read from their files.

    Raises:
        RuntimeError: the revision files do not form one line of history.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in VERSIONS.glob("*.py"):
        source = path.read_text(encoding="utf-8")
        if (rev := _REVISION.search(source)) is None:
            continue  # __init__.py
        revisions.add(rev.group(1))
        down = _DOWN.search(source)
        if down is not None and down.group(1):
            parents.add(down.group(1))
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"migrations have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()


def fast_upgrade(engine: Engine) -> str | None:
    """Bring the schema to the head without alembic when the start-up allows; else None.

    Returns:
        The head revision, or None when ``migrate.upgrade_database`` must run.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached or altered.
    """
    if engine.dialect.name != "sqlite":  # PostgreSQL: start-ups serialise on alembic's lock
        return None
    head = shipped_head()
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        if "alembic_version" in tables:
            if _revision(conn) != head:
                return None
            _safety_net(conn)
            return head
        if tables:
            return None
    return _create_empty_sqlite(engine, head)


def _revision(conn: Connection) -> str | None:
    rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    conn.rollback()
    return rows[0] if len(rows) == 1 else None


def _safety_net(conn: Connection) -> None:
    drift = fill_missing(conn, Base.metadata)
    conn.commit()
    if drift:
        log.warning("models ahead of the migrations, added %s: write an alembic revision", drift)


def _create_empty_sqlite(engine: Engine, head: str) -> str | None:
    with engine.connect() as conn:
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # one writer: a concurrent start-up waits here
        if inspect(conn).get_table_names():  # another start-up made it first
            conn.rollback()
            return None
        Base.metadata.create_all(conn, checkfirst=False)
        _VERSION_TABLE.create(conn)
        conn.execute(_VERSION_TABLE.insert().values(version_num=head))
        conn.commit()
    log_event(log, "database.upgraded", from_revision="empty", to_revision=head)
    return head
