"""Schema upgrades at start-up: alembic migrations, adopting pre-alembic databases first.

``upgrade_database`` runs in every process that opens the database (the service, the CLI
commands). Three starting points:

- an empty database: the migrations create every table;
- a database made by ``create_all`` before alembic came (no ``alembic_version`` table): the
  baseline revision keeps its tables and rows and adds only what it lacks, as the old start-up
  did; later revisions follow;
- a database at an older revision: upgraded to the head.

On PostgreSQL, processes that start together take an advisory lock around the upgrade, so one
migrates and the others find the head already there.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from aggregator.logs import log_event
from aggregator.storage.db.models import Base
from aggregator.storage.db.schema_fill import fill_missing

log = logging.getLogger("aggregator.storage.db")
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BASELINE_REVISION = "0001"
# pg_advisory_lock key of schema upgrades ("fedseg" + "mig" as bytes): one at a time cluster-wide.
MIGRATION_LOCK_KEY = 0x66656473656701


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic configuration of the aggregator's migrations, built in code (no alembic.ini).

    Args:
        connection: the connection migrations run on (``env.py`` reads it). Default None.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision of the migrations shipped with this release."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's revision, or None (empty, or made before alembic)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade_database(engine: Engine) -> str:
    """Bring the database to the head revision (idempotent); returns the revision.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached or altered.
    """
    with engine.connect() as conn:
        locked = conn.dialect.name == "postgresql"
        if locked:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            conn.commit()
        try:
            before = MigrationContext.configure(conn).get_current_revision()
            legacy = before is None and bool(
                set(inspect(conn).get_table_names()) & set(Base.metadata.tables)
            )
            command.upgrade(alembic_config(conn), "head")
            conn.commit()
            after = MigrationContext.configure(conn).get_current_revision()
            # A safety net, not a substitute: models changed without a revision still get
            # their new tables and nullable columns (tests/aggregator/test_migrations.py fails).
            drift = fill_missing(conn, Base.metadata)
            conn.commit()
        finally:
            if locked:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
                conn.commit()
    if drift:
        log.warning("models ahead of the migrations, added %s: write an alembic revision", drift)
    if before != after:
        start = "pre-alembic" if legacy else (before or "empty")
        log_event(log, "database.upgraded", from_revision=start, to_revision=after)
    return str(after)
