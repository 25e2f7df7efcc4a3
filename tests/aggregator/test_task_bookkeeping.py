"""Deliveries and bytes served are noted in memory and written in batches, not per request."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from aggregator.api.deps import Services
from aggregator.crud.task_bookkeeping import TaskBookkeeping
from aggregator.storage.db import Database
from aggregator.storage.db.models import Task, TaskStatus, utcnow
from tests.aggregator.conftest import ON_POSTGRES
from tests.aggregator.helpers import Federation


def _writes(services: Services) -> tuple[list[tuple[str, str]], Any]:
    seen: list[tuple[str, str]] = []

    def record(_conn: object, _cursor: object, sql: str, *_: object) -> None:
        if sql.split()[0].upper() in {"UPDATE", "INSERT", "DELETE"}:
            seen.append((threading.current_thread().name, sql.split()[0].upper()))

    event.listen(services.database.engine, "before_cursor_execute", record)
    return seen, record


def _round_open_and_writes_watched(
    fed: Federation, services: Services
) -> tuple[list[tuple[str, str]], Any]:
    """A started one-round experiment with its tasks out, nothing pending, writes recorded."""
    fed.start(fed.create_experiment(rounds=1))
    services.orchestrator.step()
    services.bookkeeping.flush()
    return _writes(services)


def _task(services: Services, task_id: str) -> Task:
    with services.database.session() as session:
        row = session.get(Task, task_id)
        assert row is not None
        return row


def test_a_poll_and_a_model_download_write_nothing_on_the_request(
    fed: Federation, services: Services
) -> None:
    seen, record = _round_open_and_writes_watched(fed, services)
    try:
        task = fed.next_task("site-a")
        assert task is not None
        body = fed.model("site-a", task["task_id"])
        on_requests = [verb for name, verb in seen if name != "fedseg-bookkeeping"]
        assert on_requests == []  # before: an UPDATE (and its commit) in each request
        services.bookkeeping.flush()
    finally:
        event.remove(services.database.engine, "before_cursor_execute", record)
    row = _task(services, task["task_id"])
    assert row.status == TaskStatus.DELIVERED and row.delivered_at is not None
    assert row.bytes_down == len(body)


def test_the_background_writer_writes_the_notes_in_one_batch_soon(
    fed: Federation, services: Services
) -> None:
    seen, record = _round_open_and_writes_watched(fed, services)
    try:
        tasks = {name: fed.next_task(name) for name in ("site-a", "site-b", "site-c")}
        for name, task in tasks.items():
            assert task is not None
            fed.model(name, task["task_id"])
        deadline = time.monotonic() + 10
        while services.bookkeeping.pending and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)  # the batch's commit
    finally:
        event.remove(services.database.engine, "before_cursor_execute", record)
    assert services.bookkeeping.pending == 0
    assert {name for name, _ in seen} == {"fedseg-bookkeeping"}
    # nine notes (the sites' visits too), at most two batches of up to three executemany
    # statements (one for each kind)
    assert 2 <= len(seen) <= 6, seen
    for task in tasks.values():
        assert task is not None
        row = _task(services, task["task_id"])
        assert row.delivered_at is not None and row.bytes_down > 0


def test_the_rounds_api_shows_what_this_process_served_at_once(
    fed: Federation, services: Services
) -> None:
    exp = fed.create_experiment(rounds=1)
    fed.start(exp)
    services.orchestrator.step()
    task = fed.next_task("site-b")
    assert task is not None
    body = fed.model("site-b", task["task_id"])
    rows = {s["site_name"]: s for s in fed.rounds(exp)[0]["sites"]}  # flushes first
    assert rows["site-b"]["bytes_down"] == len(body)
    assert rows["site-b"]["status"] == "delivered" and rows["site-b"]["delivered_at"]
    assert rows["site-a"]["status"] == "assigned" and rows["site-a"]["bytes_down"] == 0


def test_a_late_note_keeps_the_report_and_the_first_delivery(
    fed: Federation, services: Services
) -> None:
    exp = fed.create_experiment(rounds=1)
    fed.start(exp)
    services.orchestrator.step()
    task = fed.next_task("site-c")
    assert task is not None
    assert fed.train_and_upload("site-c", task).status_code == 200
    services.bookkeeping.flush()
    before = _task(services, task["task_id"])
    assert before.status == TaskStatus.ACCEPTED and before.delivered_at is not None
    late = TaskBookkeeping(services.database, interval_s=3600)  # e.g. another process's notes
    late.delivered(task["task_id"], utcnow() - timedelta(seconds=5))
    late.served(task["task_id"], 7)
    assert late.flush() == 2
    after = _task(services, task["task_id"])
    assert after.status == TaskStatus.ACCEPTED  # not put back to "delivered"
    assert after.delivered_at == before.delivered_at  # the first delivery written stays
    assert after.bytes_down == before.bytes_down + 7
    late.close()


@pytest.mark.skipif(ON_POSTGRES, reason="a private SQLite file")
def test_a_failed_write_keeps_the_notes_for_the_next_flush(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'b.db'}")
    db.upgrade()
    book = TaskBookkeeping(db, interval_s=3600)
    book.served("t1", 100)
    book.delivered("t1", utcnow())
    real = db.session

    def broken() -> Any:
        raise RuntimeError("database away")

    db.session = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        book.flush()
    assert book.pending == 2
    book.served("t1", 20)
    db.session = real  # type: ignore[method-assign]
    with db.session() as session:
        assert session.scalars(select(Task.id)).all() == []  # no such task: updates touch nothing
    assert book.flush() == 2
    assert book.pending == 0
    book.close()
    db.dispose()


@pytest.mark.skipif(ON_POSTGRES, reason="a private SQLite file")
def test_close_ends_the_writers_wait_at_once_and_writes_what_is_left(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'c.db'}")
    db.upgrade()
    book = TaskBookkeeping(db, interval_s=3600)  # the writer would gather notes for an hour
    book.served("t1", 100)  # starts the writer
    deadline = time.monotonic() + 10
    while book._wake.is_set() and time.monotonic() < deadline:  # until it waits the interval
        time.sleep(0.01)
    assert not book._wake.is_set()
    started = time.monotonic()
    book.close()
    assert time.monotonic() - started < 2.0  # not the hour, nor close()'s 10 s join timeout
    assert book.pending == 0  # close() wrote the note itself
    assert not any(t.name == "fedseg-bookkeeping" and t.is_alive() for t in threading.enumerate())
    db.dispose()
