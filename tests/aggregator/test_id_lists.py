"""No SQL statement of a round grows with the number of sites (issue 20: RSS flat in sites).

Python's ``sqlite3`` keeps each pooled connection's prepared statements. When a round of N
sites sent ``IN`` lists of N placeholders and one N-row task insert, every connection in turn
cached its own copy of statements whose size grew with N (2.2 MiB for the insert at 1,000
sites), and the aggregator's memory grew round after round.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, select

from aggregator.crud.rounds import create_round
from aggregator.rounds.transitions import site_names
from aggregator.storage.db import Database, Site, Task
from aggregator.storage.db.engine import INSERT_PAGE_ROWS
from aggregator.storage.db.id_lists import SHORT_LIST, in_ids
from tests.aggregator.db_rows import EXPERIMENT_ID, seed_federation


@pytest.fixture
def database(tmp_path: Path, database_url: str | None) -> Iterator[Database]:
    """SQLite, or a fresh PostgreSQL database under ``make test-postgres``."""
    db = Database(database_url or f"sqlite:///{tmp_path / 'agg.db'}")
    db.upgrade()
    yield db
    db.dispose()


LONG_LIST = r"json_each\(|= ANY \("
"""A long list: one JSON parameter on SQLite, one array on PostgreSQL."""
_HOLDER = r"(?:\?|%\(\w+\)s(?:::\w+)?)"  # SQLite's ?, or psycopg's %(name)s::TYPE
SHORT_IN = rf"IN \({_HOLDER}, {_HOLDER}, {_HOLDER}\)"
"""A plain IN of exactly three placeholders."""


class Recorder:
    """The SQL text and parameter count of every statement the engine sends."""

    def __init__(self, db: Database) -> None:
        self.sent: list[tuple[str, int]] = []
        event.listen(db.engine, "before_cursor_execute", self._record)

    def _record(self, _c: object, _cur: object, sql: str, params: object, *_: object) -> None:
        count = len(params) if isinstance(params, tuple | list | dict) else 0
        self.sent.append((sql, count))


def test_a_long_id_list_is_one_parameter_whatever_its_length(database: Database) -> None:
    ids = seed_federation(database, 400)
    recorder = Recorder(database)
    with database.session() as session:
        names = {n: site_names(session, ids[:n]) for n in (SHORT_LIST + 1, 150, 400)}
        plain = {
            n: dict(session.execute(select(Site.id, Site.name).where(Site.id.in_(ids[:n]))).all())
            for n in (SHORT_LIST + 1, 150, 400)
        }
        short = site_names(session, ids[:3])
    assert names == plain  # the same rows as a plain IN
    assert len(names[400]) == 400 and short == {i: plain[150][i] for i in ids[:3]}
    sent = [(sql, n) for sql, n in recorder.sent if re.search(LONG_LIST, sql)]
    assert len(sent) == 3 and len({sql for sql, _ in sent}) == 1, "one statement for all lengths"
    assert all(n == 1 for _, n in sent), "the whole list is one parameter"
    # A short list stays a plain IN with one placeholder per id.
    assert any(re.search(SHORT_IN, sql) for sql, _ in recorder.sent)


def test_a_sites_round_inserts_its_tasks_in_pages_of_bounded_size(database: Database) -> None:
    ids = seed_federation(database, 2 * INSERT_PAGE_ROWS + 30)
    recorder = Recorder(database)
    now = datetime.now(UTC)
    with database.session() as session:
        create_round(
            session,
            experiment_id=EXPERIMENT_ID,
            number=1,
            attempt=1,
            sampled=ids,
            opened_at=now,
            deadline_at=now + timedelta(minutes=5),
            seeds={site_id: i for i, site_id in enumerate(ids)},
            model_sha256="f" * 64,
            model_size=10,
        )
        session.commit()
        assert session.query(Task).count() == len(ids)
    inserts = [sql for sql, _ in recorder.sent if sql.startswith("INSERT INTO tasks")]
    columns = len(Task.__table__.columns)
    # One row's statement run for many rows (executemany), or pages of at most 100 rows: no
    # statement text grows with the sites.
    placeholders = [len(re.findall(r"\?|%\(\w+\)s", sql)) for sql in inserts]
    assert inserts and max(placeholders) <= INSERT_PAGE_ROWS * columns, placeholders
    # The rounds' own id-list queries, through in_ids, stay one short statement as well.
    with database.session() as session:
        query = select(Site.id).where(in_ids(session, Site.id, ids))
        assert len(session.scalars(query).all()) == len(ids)
    assert recorder.sent[-1][1] == 1
