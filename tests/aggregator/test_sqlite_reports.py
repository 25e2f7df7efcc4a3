"""SQLite: an upload's report written on the upload thread's own ``sqlite3`` connection
(``SqliteReports``): the very rows a session writes, all or nothing, one writer at a time."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from aggregator.api.deps import Services
from aggregator.crud import site_requests
from aggregator.crud.sqlite_reports import SqliteReports
from aggregator.storage.db import Database
from aggregator.storage.db.models import Event, Task, TaskStatus, utcnow
from tests.aggregator.helpers import API, Federation, all_at_once, unreported


def _sqlite_only(services: Services) -> SqliteReports:
    reports = services.site_reports
    if reports is None:
        pytest.skip("SQLite only: PostgreSQL writes the report in one statement")
    return reports


def _tasks(fed: Federation, services: Services, *names: str) -> tuple[str, list[str]]:
    exp = fed.start_first_round(services, rounds=1, min_sites=3)
    ids = []
    for name in names:
        task = fed.next_task(name)
        assert task is not None
        ids.append(task["task_id"])
    return exp, ids


def _event(exp: str, kind: str) -> dict[str, Any]:
    return {"kind": kind, "actor": "site:x", "experiment_id": exp, "detail": {"n": 1}}


def _reject(
    reports: SqliteReports, task_id: str, exp: str, kind: str, reason: str = "x"
) -> site_requests.Recorded:
    """The task rejected for ``reason``, with an event of ``kind`` in experiment ``exp``."""
    return reports.record(
        task_id=task_id,
        status=TaskStatus.REJECTED,
        now=utcnow(),
        values={"reject_reason": reason},
        event=_event(exp, kind),
    )


def _row(services: Services, task_id: str) -> dict[str, Any]:
    with services.database.session() as session:
        task = session.get(Task, task_id)
        assert task is not None
        return {c.key: getattr(task, c.key) for c in Task.__table__.columns}


def _events(services: Services, kind: str) -> list[Event]:
    with services.database.session() as session:
        return list(session.scalars(select(Event).where(Event.kind == kind)))


def test_it_writes_the_rows_a_session_writes(fed: Federation, services: Services) -> None:
    """Two tasks reported with the same values, one through a session and one through the
    writer: the same columns (a JSON None stored as the session stores it, aware datetimes)
    and the same event; each report counts its round down by one."""
    reports = _sqlite_only(services)
    exp, (by_session, by_writer) = _tasks(fed, services, "site-a", "site-b")
    now = utcnow()
    values = {
        "update_sha256": "ab" * 32,
        "update_blob_sha256": None,
        "bytes_up": 123,
        "num_samples": 7,
        "metrics": None,
        "reject_reason": "norm",
    }
    with services.database.session() as session:
        first = site_requests.record_report(
            session, task_id=by_session, status=TaskStatus.REJECTED, now=now, values=values
        )
        site_requests.insert_event(session, **_event(exp, "test.session"))
        session.commit()
    second = reports.record(
        task_id=by_writer,
        status=TaskStatus.REJECTED,
        now=now,
        values=values,
        event=_event(exp, "test.writer"),
    )
    assert first == site_requests.Recorded(won=True, unreported=2)
    assert second == site_requests.Recorded(won=True, unreported=1)
    a, b = _row(services, by_session), _row(services, by_writer)
    differ = {"id", "site_id", "seed", "created_at", "delivered_at"}  # the tasks' own
    assert {k: v for k, v in a.items() if k not in differ} == {
        k: v for k, v in b.items() if k not in differ
    }
    assert b["status"] == TaskStatus.REJECTED and b["reported_at"] == now
    assert b["reported_at"].tzinfo is not None
    with sqlite3.connect(services.database.sqlite_path) as raw:  # the stored text itself
        stored = dict(
            raw.execute(
                "SELECT id, metrics FROM tasks WHERE id IN (?, ?)", (a["id"], b["id"])
            ).fetchall()
        )
    assert stored[a["id"]] == stored[b["id"]]
    [logged] = _events(services, "test.writer")
    [reference] = _events(services, "test.session")
    assert (logged.actor, logged.experiment_id, logged.detail) == (
        reference.actor,
        reference.experiment_id,
        reference.detail,
    )
    assert logged.at.tzinfo is not None


def test_a_report_on_a_task_no_longer_open_writes_nothing(
    fed: Federation, services: Services
) -> None:
    reports = _sqlite_only(services)
    exp, [task_id] = _tasks(fed, services, "site-a")
    won = _reject(reports, task_id, exp, "test.won", reason="a")
    assert won == site_requests.Recorded(won=True, unreported=2)
    lost = _reject(reports, task_id, exp, "test.lost", reason="b")
    assert lost == site_requests.Recorded(won=False, unreported=None)
    assert _events(services, "test.lost") == []
    assert _row(services, task_id)["reject_reason"] == "a"
    assert unreported(services, task_id) == 2


def test_a_failed_report_stores_nothing_and_frees_the_writer(
    fed: Federation, services: Services
) -> None:
    """The event names an experiment that does not exist (a foreign key: the engine's pragmas
    hold here too): the task stays open, the count unchanged, and the next write goes through."""
    reports = _sqlite_only(services)
    exp, [task_id] = _tasks(fed, services, "site-a")
    before = _row(services, task_id)
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        _reject(reports, task_id, "no-such-experiment", "test.bad")
    assert _row(services, task_id) == before and before["reported_at"] is None
    assert unreported(services, task_id) == 3
    done = _reject(reports, task_id, exp, "test.ok")
    assert done.won and len(_events(services, "test.ok")) == 1


def test_it_waits_for_a_session_that_is_writing(fed: Federation, services: Services) -> None:
    """One writer at a time in the process: a report waits on the engine's writer lock until
    a session's write transaction commits, then goes through (no 'database is locked')."""
    reports = _sqlite_only(services)
    exp, [task_id] = _tasks(fed, services, "site-a")
    writing, release = threading.Event(), threading.Event()

    def session_write() -> None:
        with services.database.session() as session:
            site_requests.insert_event(session, **_event(exp, "test.first"))
            writing.set()
            release.wait(10)
            session.commit()

    thread = threading.Thread(target=session_write)
    thread.start()
    assert writing.wait(10)
    timer = threading.Timer(0.3, release.set)
    timer.start()
    started = time.monotonic()
    done = _reject(reports, task_id, exp, "test.second")
    waited = time.monotonic() - started
    thread.join(10)
    assert done.won and waited >= 0.25, waited
    first, second = _events(services, "test.first"), _events(services, "test.second")
    assert len(first) == len(second) == 1 and first[0].id < second[0].id


def test_concurrent_reports_count_their_round_down_one_by_one(
    fed: Federation, services: Services
) -> None:
    reports = _sqlite_only(services)
    exp, ids = _tasks(fed, services, "site-a", "site-b", "site-c")

    seen = all_at_once(
        lambda task_id: _reject(reports, task_id, exp, "test.concurrent").unreported, ids
    )
    assert sorted(seen) == [0, 1, 2], seen  # type: ignore[type-var]
    assert len(_events(services, "test.concurrent")) == 3


def test_uploads_report_through_it(fed: Federation, services: Services) -> None:
    """A whole round of uploads on the app goes through the writer, and the round closes."""
    reports = _sqlite_only(services)
    exp, _ = _tasks(fed, services)
    reports.close()  # forget connections the set-up may have opened
    for name in ("site-a", "site-b", "site-c"):
        task = fed.next_task(name)
        assert task is not None
        r = fed.train_and_upload(name, task)
        assert r.status_code == 200 and r.json()["accepted"], r.text
    assert reports.opened >= 1
    assert len(_events(services, "update.accepted")) == 3
    services.orchestrator.step()
    rounds = fed.client.get(f"{API}/experiments/{exp}/rounds", headers=fed.rh).json()
    assert rounds[0]["status"] == "closed", rounds


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_its_connections_have_the_engines_pragmas(tmp_path: Path, synchronous: str) -> None:
    path = tmp_path / "a.db"
    Database(f"sqlite:///{path}").upgrade()
    reports = SqliteReports(str(path), synchronous=synchronous)
    conn = reports._connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == {"FULL": 2, "NORMAL": 1}[synchronous]
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    reports.close()


def test_each_thread_writes_on_a_connection_of_its_own_and_close_ends_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.db"
    Database(f"sqlite:///{path}").upgrade()
    reports = SqliteReports(str(path), synchronous="FULL")
    seen: list[sqlite3.Connection] = []
    thread = threading.Thread(target=lambda: seen.append(reports._connection()))
    thread.start()
    thread.join()
    seen.append(reports._connection())
    assert len({id(c) for c in seen}) == 2 and reports.opened == 2
    reports.close()
    assert reports.opened == 0
    with pytest.raises(sqlite3.ProgrammingError):
        seen[0].execute("SELECT 1")
