"""SQLite: a site's poll and upload checks read on the event loop's own ``sqlite3`` connection
(``SqliteReads``), with the very rows, types and errors the session path gives."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, select

from aggregator.api.deps import Services
from aggregator.crud import site_requests
from aggregator.errors import NotFoundError
from aggregator.storage.db import Database
from aggregator.storage.db.models import Round, Task
from aggregator.storage.db.sqlite_reads import SqliteReads
from tests.aggregator.helpers import Federation


def _sqlite_only(services: Services) -> SqliteReads:
    reads = services.async_reads
    if not isinstance(reads, SqliteReads):
        pytest.skip("SQLite only: PostgreSQL's reads are AsyncReads (test_async_reads.py)")
    return reads


def _one(reads: SqliteReads, statement: Any, params: dict[str, Any]) -> dict[str, Any] | None:
    return asyncio.run(reads.one(statement, params))


def test_the_upload_check_reads_what_a_session_reads(fed: Federation, services: Services) -> None:
    """The outer join, labelled columns and datetimes (the poll's statement: in
    ``test_async_reads.py``, which runs on both databases)."""
    reads = _sqlite_only(services)
    fed.start_first_round(services, rounds=2)
    site_id = fed.sites["site-a"][0]
    task = _one(reads, site_requests.NEXT_TASK, {"site_id": site_id})
    assert task is not None and task["started_at"].tzinfo == UTC
    with services.database.read_session() as session:
        ctx = site_requests.upload_context(session, task_id=task["id"], site_id=site_id)
    row = _one(reads, site_requests.UPLOAD_CONTEXT, {"task_id": task["id"]})
    assert site_requests.upload_context_of(row, task_id=task["id"], site_id=site_id) == ctx
    assert ctx.previous_sha256 is not None and ctx.round_number == 1  # round 0's model
    with pytest.raises(NotFoundError, match="not found for this site"):
        site_requests.upload_context_of(row, task_id=task["id"], site_id="another-site")
    assert _one(reads, site_requests.UPLOAD_CONTEXT, {"task_id": "no-such-task"}) is None


def test_each_read_sees_what_was_committed_before_it(fed: Federation, services: Services) -> None:
    """The connection stays open between requests, yet never reads an old snapshot."""
    reads = _sqlite_only(services)
    fed.start_first_round(services, rounds=2)
    site_id = fed.sites["site-a"][0]
    first = _one(reads, site_requests.NEXT_TASK, {"site_id": site_id})
    assert first is not None and first["round_number"] == 1
    task = fed.next_task("site-a")
    assert task is not None
    assert fed.train_and_upload("site-a", task).status_code == 200  # committed elsewhere
    ctx = _one(reads, site_requests.UPLOAD_CONTEXT, {"task_id": first["id"]})
    assert ctx is not None and ctx["status"] == "accepted" and ctx["update_sha256"]
    assert _one(reads, site_requests.NEXT_TASK, {"site_id": site_id}) is None  # reported


def test_the_sites_requests_read_through_it(fed: Federation, services: Services) -> None:
    """A poll and an upload of a started experiment open the event loop thread's connection;
    a whole round goes through as before."""
    reads = _sqlite_only(services)
    fed.start_first_round(services, rounds=2)
    asyncio.run(reads.close())  # forget connections the set-up may have opened
    for name in ("site-a", "site-b", "site-c"):
        task = fed.next_task(name)
        assert task is not None
        r = fed.train_and_upload(name, task)
        assert r.status_code == 200 and r.json()["accepted"], r.text
    assert reads.opened >= 1
    services.orchestrator.step()
    assert fed.next_task("site-a") is not None  # round 2


def test_its_connections_refuse_writes(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    Database(f"sqlite:///{path}").upgrade()
    reads = SqliteReads(str(path))
    conn = reads._connection()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("DELETE FROM tasks")
    asyncio.run(reads.close())


def test_each_thread_reads_on_a_connection_of_its_own_and_close_ends_them(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    Database(f"sqlite:///{path}").upgrade()
    reads = SqliteReads(str(path))
    seen: list[sqlite3.Connection] = []

    def read() -> None:
        assert _one(reads, site_requests.NEXT_TASK, {"site_id": "x"}) is None
        seen.append(reads._connection())

    threads = [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    read()
    assert len({id(c) for c in seen}) == 3 and reads.opened == 3
    asyncio.run(reads.close())
    assert reads.opened == 0
    with pytest.raises(sqlite3.ProgrammingError):
        seen[0].execute("SELECT 1")
    read()  # a read after close opens a new one
    assert reads.opened == 1
    asyncio.run(reads.close())


def test_the_database_names_its_file(tmp_path: Path) -> None:
    assert Database(f"sqlite:///{tmp_path}/a.db").sqlite_path == f"{tmp_path}/a.db"


def test_parameters_go_through_their_columns_bind_processors(
    fed: Federation, services: Services
) -> None:
    """An aware datetime is stored naive UTC (``UTCDateTime``): compared as the ORM would."""
    reads = _sqlite_only(services)
    fed.start_first_round(services, rounds=2)
    tasks = Task.__table__.c
    created_before = select(tasks.id).where(tasks.created_at < bindparam("before")).limit(1)
    later = datetime.now(UTC) + timedelta(hours=1)
    assert _one(reads, created_before, {"before": later}) is not None
    assert _one(reads, created_before, {"before": later - timedelta(days=1)}) is None
    with pytest.raises(ValueError, match="naive datetimes"):
        _one(reads, created_before, {"before": later.replace(tzinfo=None)})


def test_a_statement_whose_columns_share_a_name_is_refused(tmp_path: Path) -> None:
    reads = SqliteReads(str(tmp_path / "a.db"))
    tasks, rounds = Task.__table__.c, Round.__table__.c
    both_ids = select(tasks.id, rounds.id).where(tasks.round_id == rounds.id)
    with pytest.raises(ValueError, match="a name of its own"):
        _one(reads, both_ids, {})
