"""Alembic migrations: a fresh database equals the models, and older databases keep their rows.

Each test runs on SQLite and on a real PostgreSQL server (the PostgreSQL case skips loudly when
the server cannot start).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text

from aggregator.settings import default_database_url
from aggregator.storage.db import Base, Database, Researcher, Site
from aggregator.storage.db.migrate import alembic_config, current_revision, head_revision
from aggregator.storage.db.models import utcnow
from tests.aggregator.postgres import PostgresServer


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return default_database_url(tmp_path)
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.database_url()


@pytest.fixture
def database(url: str) -> Iterator[Database]:
    db = Database(url)
    yield db
    db.dispose()


def _drift(db: Database) -> list[object]:
    with db.engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def _legacy_rows(db: Database) -> None:
    with db.session() as session:
        session.add(Researcher(id="r1", name="alice", token_hash="a" * 64))
        session.add(Site(id="s1", name="hospital-a", registered_by="r1", max_samples=12))
        session.commit()


def test_the_migrations_alone_build_exactly_the_models(database: Database) -> None:
    """Only the revisions, no safety net: a model change without a revision fails here."""
    with database.engine.connect() as conn:
        command.upgrade(alembic_config(conn), "head")
        conn.commit()
    assert current_revision(database.engine) == head_revision()
    assert _drift(database) == []


def test_start_up_upgrades_an_empty_database_and_is_idempotent(database: Database) -> None:
    assert current_revision(database.engine) is None
    assert database.upgrade() == head_revision()
    assert database.upgrade() == head_revision()
    assert set(Base.metadata.tables) <= set(inspect(database.engine).get_table_names())


def test_a_pre_alembic_database_is_adopted_keeping_its_rows(database: Database) -> None:
    # What the last release's start-up made: create_all of the models, no alembic_version.
    Base.metadata.create_all(database.engine)
    _legacy_rows(database)
    assert current_revision(database.engine) is None
    assert database.upgrade() == head_revision()
    with database.session() as session:
        site = session.scalars(select(Site)).one()
        assert (site.name, site.registered_by, site.max_samples) == ("hospital-a", "r1", 12)
    assert _drift(database) == []


def test_an_older_pre_alembic_database_gets_its_missing_columns_and_tables(
    database: Database,
) -> None:
    """An even older release: one nullable column and one table fewer than today."""
    Base.metadata.create_all(database.engine)
    _legacy_rows(database)
    with database.engine.begin() as conn:
        conn.execute(text('ALTER TABLE "sites" DROP COLUMN "accept_policy"'))
        conn.execute(text('DROP TABLE "site_fingerprints"'))
    assert "accept_policy" not in {c["name"] for c in inspect(database.engine).get_columns("sites")}
    database.upgrade()
    assert _drift(database) == []
    with database.session() as session:
        site = session.scalars(select(Site)).one()
        assert (site.name, site.accept_policy) == ("hospital-a", None)
        site.accept_policy = ["*"]
        session.commit()


def test_concurrent_start_ups_migrate_once(database: Database, url: str) -> None:
    """Two processes' start-ups at once (PostgreSQL serialises them with an advisory lock)."""
    if database.is_sqlite:
        pytest.skip("SQLite serves one process; its concurrent start-up is not a case")
    other = Database(url)
    errors: list[BaseException] = []

    def start(db: Database) -> None:
        try:
            db.upgrade()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(db,)) for db in (database, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    other.dispose()
    assert errors == []
    assert current_revision(database.engine) == head_revision()
    assert _drift(database) == []


def test_a_database_at_0003_gets_each_rounds_unreported_tasks_counted(
    database: Database,
) -> None:
    """Revision 0004: ``round_progress``, one row per round, counted from its tasks that have not
    reported (an open round mid-way, and a closed round whose last task expired unreported)."""
    from aggregator.storage.db.models import Experiment, Round, RoundProgress, Task

    with database.engine.connect() as conn:
        command.upgrade(alembic_config(conn), "0003")
        conn.commit()
    _legacy_rows(database)
    now = utcnow()
    with database.session() as session:
        for i in (2, 3):
            session.add(Site(id=f"s{i}", name=f"hospital-{i}", registered_by="r1"))
        session.add(
            Experiment(
                id="e1",
                name="x",
                owner_id="r1",
                config={},
                spec_hash="h",
                expected={},
                local_keys=[],
            )
        )
        for rid, status in (("open", "open"), ("done", "closed")):
            session.add(
                Round(
                    id=rid,
                    experiment_id="e1",
                    number=2 if rid == "open" else 1,
                    status=status,
                    sampled=["s1", "s2", "s3"],
                    opened_at=now,
                    deadline_at=now,
                )
            )
        session.flush()
        reported = {("open", 0): "accepted", ("done", 0): "accepted", ("done", 1): "failed"}
        for rid in ("open", "done"):
            for i in range(3):
                status = reported.get((rid, i), "delivered" if rid == "open" else "expired")
                session.add(
                    Task(
                        id=f"{rid}{i}",
                        round_id=rid,
                        experiment_id="e1",
                        site_id=f"s{i + 1}",
                        round_number=1,
                        status=status,
                        seed=i,
                        model_sha256="0" * 64,
                        model_size=1,
                        reported_at=now if (rid, i) in reported else None,
                    )
                )
        session.commit()
    assert not inspect(database.engine).has_table("round_progress")
    assert database.upgrade() == head_revision()
    assert _drift(database) == []
    with database.session() as session:
        counted = {row.round_id: row.unreported for row in session.scalars(select(RoundProgress))}
    assert counted == {"open": 2, "done": 1}
    assert database.upgrade() == head_revision()  # again: nothing is counted twice


def test_rows_written_after_the_upgrade_use_the_schema(database: Database) -> None:
    database.upgrade()
    _legacy_rows(database)
    with database.session() as session:
        researcher = session.get(Researcher, "r1")
        assert researcher is not None and researcher.created_at <= utcnow()


def test_a_database_at_0002_gets_the_round_status_index_keeping_its_rows(
    database: Database,
) -> None:
    """Revision 0003: ``ix_tasks_round_status`` replaces ``ix_tasks_round_id``."""
    with database.engine.connect() as conn:
        command.upgrade(alembic_config(conn), "0002")
        conn.commit()
    _legacy_rows(database)

    def indexes() -> set[str]:
        return {str(ix["name"]) for ix in inspect(database.engine).get_indexes("tasks")}

    assert "ix_tasks_round_id" in indexes() and "ix_tasks_round_status" not in indexes()
    assert database.upgrade() == head_revision()
    assert "ix_tasks_round_status" in indexes() and "ix_tasks_round_id" not in indexes()
    assert _drift(database) == []
    with database.session() as session:
        assert session.scalars(select(Site)).one().name == "hospital-a"
