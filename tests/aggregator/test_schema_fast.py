"""The schema's start-up without alembic: the same file as the migrations make, and the fallbacks."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from alembic import command
from sqlalchemy import text

from aggregator.settings import default_database_url
from aggregator.storage.db import Database
from aggregator.storage.db.migrate import alembic_config, current_revision, head_revision
from aggregator.storage.db.schema_fast import fast_upgrade, shipped_head


def _ddl(db: Database) -> dict[tuple[str, str], str | None]:
    path = db.engine.url.database
    assert path is not None
    with sqlite3.connect(path) as con:
        return {
            (t, n): sql for t, n, sql in con.execute("SELECT type, name, sql FROM sqlite_master")
        }


def test_shipped_head_is_alembics_head() -> None:
    assert shipped_head() == head_revision()


def test_an_empty_sqlite_gets_the_migrations_schema_byte_for_byte(tmp_path: Path) -> None:
    migrated = Database(default_database_url(tmp_path / "m"))
    with migrated.engine.connect() as conn:
        command.upgrade(alembic_config(conn), "head")
        conn.commit()
    fast = Database(default_database_url(tmp_path / "f"))
    assert fast_upgrade(fast.engine) == head_revision()
    assert _ddl(fast) == _ddl(migrated)
    assert current_revision(fast.engine) == head_revision()
    migrated.dispose()
    fast.dispose()


def test_start_ups_of_a_new_and_a_restarted_database_import_no_alembic(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from aggregator.settings import default_database_url\n"
        "from aggregator.storage.db import Database\n"
        f"url = default_database_url(Path({str(tmp_path)!r}))\n"
        "print(Database(url).upgrade(), Database(url).upgrade())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    head = head_revision()
    assert out.stdout.splitlines() == [f"{head} {head}", "[]"]


def test_an_older_revision_goes_through_alembic(tmp_path: Path) -> None:
    db = Database(default_database_url(tmp_path))
    with db.engine.connect() as conn:
        command.upgrade(alembic_config(conn), "0001")
        conn.commit()
    assert fast_upgrade(db.engine) is None
    assert db.upgrade() == head_revision()
    assert fast_upgrade(db.engine) == head_revision()  # now at the head
    db.dispose()


def test_the_safety_net_still_runs_at_the_head(tmp_path: Path) -> None:
    db = Database(default_database_url(tmp_path))
    db.upgrade()
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE dp_round_clips"))
    assert db.upgrade() == head_revision()
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM dp_round_clips")).scalar() == 0
    db.dispose()


def test_postgresql_always_goes_through_alembics_lock() -> None:
    from types import SimpleNamespace

    engine = SimpleNamespace(dialect=SimpleNamespace(name="postgresql"))
    assert fast_upgrade(engine) is None  # type: ignore[arg-type]
