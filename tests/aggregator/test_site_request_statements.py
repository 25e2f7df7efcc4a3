"""A site's requests each round send few SQL statements, and none that grows with the federation.

Counted with SQLAlchemy's ``before_cursor_execute`` on the app's engine, for a site whose token
is already known (``principal_cache``) in a started experiment (``experiment_facts``).
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, select

from aggregator.api.deps import Services
from tests.aggregator.helpers import API, Federation, all_at_once, unreported, update_bundle


@contextmanager
def _cursor_executes(services: Services, record: Callable[..., None]) -> Iterator[None]:
    """Call ``record`` for every statement the app's engine sends while the block runs, for
    every look-up sent on the event loop (``AsyncReads``, ``SqliteReads``), with conn None, and
    (SQLite) for every statement of an upload's report (``SqliteReports``), as SQLite runs it."""
    engine = services.database.engine
    event.listen(engine, "before_cursor_execute", record)
    reads = services.async_reads
    if reads is not None:
        real = reads.one

        async def observed(statement: Any, params: dict[str, Any]) -> Any:
            record(None, None, str(statement.compile(dialect=engine.dialect)))
            return await real(statement, params)

        reads.one = observed  # type: ignore[method-assign]
    reports = services.site_reports
    traced: list[sqlite3.Connection] = []
    if reports is not None:
        real_connection = reports._connection

        def trace(sql: str) -> None:
            if sql.split()[0].upper() not in ("BEGIN", "COMMIT", "ROLLBACK"):
                record(None, None, sql)

        def tracing() -> sqlite3.Connection:
            conn = real_connection()
            conn.set_trace_callback(trace)
            traced.append(conn)
            return conn

        reports._connection = tracing  # type: ignore[method-assign]
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", record)
        if reads is not None:
            del reads.one  # the class's method again
        if reports is not None:
            del reports._connection
            for conn in traced:
                conn.set_trace_callback(None)


def _on_request_thread() -> bool:
    """Not the batched bookkeeping writes on their own thread: the request's own statements."""
    return threading.current_thread().name != "fedseg-bookkeeping"


@contextmanager
def statements(services: Services) -> Iterator[list[str]]:
    """The SQL statements the app sends while the block runs, as ``VERB table[+joined]``."""
    seen: list[str] = []

    def record(_conn: object, _cursor: object, sql: str, *_: object) -> None:
        verb = sql.split()[0].upper()
        if verb == "PRAGMA" or not _on_request_thread():
            return
        if verb == "SELECT":
            tables = re.findall(r"\b(?:FROM|JOIN)\s+(\w+)", sql)
            seen.append(f"SELECT {'+'.join(dict.fromkeys(tables))}")
        elif verb == "WITH":  # data-modifying WITH clauses: what they write
            writes = re.findall(r"\b(UPDATE|INSERT INTO)\s+(\w+)", sql)
            seen.append("WITH " + " + ".join(f"{w.split()[0]} {t}" for w, t in writes))
        else:
            target = re.search(r"(?:UPDATE|INTO)\s+(\w+)", sql)
            seen.append(f"{verb} {target.group(1) if target else '?'}")

    with _cursor_executes(services, record):
        yield seen


def _tables(sqls: list[str]) -> str:
    return " | ".join(sqls)


def test_a_round_of_one_site_sends_a_handful_of_statements(
    fed: Federation, services: Services
) -> None:
    exp = fed.create_experiment(rounds=1, min_sites=3)
    fed.start(exp)
    services.orchestrator.step()
    assert fed.next_task("site-b") is not None  # the experiment's facts are read once here
    assert fed.next_task("site-a", wait=0) is not None  # site-a's token is looked up once
    # site-a again: its task is delivered, so it is found again (a re-delivery)
    with statements(services) as polled:
        task = fed.next_task("site-a")
    assert task is not None
    with statements(services) as fetched:
        r = fed.client.get(f"{API}/tasks/{task['task_id']}/model", headers=fed.sh("site-a"))
        assert r.status_code == 200
    body = update_bundle(
        r.content, site="site-a", round_number=1, num_samples=10, spec_hash=task["spec_hash"]
    )
    with statements(services) as uploaded:
        assert fed.upload("site-a", task["task_id"], body, 10).status_code == 200

    # The next task (one SELECT); no site, experiment or round re-read on their own.
    assert polled == ["SELECT tasks+rounds+experiments"], _tables(polled)
    # The task's model (its byte counter is written later, batched: task_bookkeeping).
    assert fetched == ["SELECT tasks"], _tables(fetched)
    # Before the body: one SELECT for task, round, experiment and previous model. After it:
    # the report's compare-and-set, its round's count of unreported tasks lowered by one, and
    # the audit event (on PostgreSQL one statement; on SQLite one transaction of the upload
    # thread's own connection, SqliteReports). Nothing reads the round's other tasks.
    report = (
        ["UPDATE tasks", "UPDATE round_progress", "INSERT events"]
        if services.database.is_sqlite
        else ["WITH UPDATE tasks + INSERT events + UPDATE round_progress"]
    )
    assert uploaded == ["SELECT tasks+rounds+experiments+global_models", *report], _tables(uploaded)


def test_a_started_experiments_config_is_validated_once_not_per_request(
    fed: Federation, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    from data_specs.researcher.experiments import ExperimentCreate

    exp = fed.create_experiment(rounds=1, min_sites=3)
    fed.start(exp)
    services.orchestrator.step()
    assert fed.next_task("site-c") is not None  # read and validated once here (or before)
    validated: list[int] = []
    real = ExperimentCreate.model_validate

    def counted(*args: object, **kwargs: object) -> ExperimentCreate:
        validated.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ExperimentCreate, "model_validate", counted)
    for name in ("site-a", "site-b"):
        task = fed.next_task(name)
        assert task is not None
        assert fed.train_and_upload(name, task).status_code == 200
    assert validated == []  # each of these requests decoded the O(sites) config before


@contextmanager
def autocommitted(services: Services) -> Iterator[list[tuple[str, bool]]]:
    """Each statement's verb, and whether it ran outside a transaction (the driver's autocommit)."""
    seen: list[tuple[str, bool]] = []

    def record(conn: Any, _cursor: object, sql: str, *_: object) -> None:
        if conn is None:  # AsyncReads: its connections are autocommit
            seen.append((sql.split()[0].upper(), True))
        elif _on_request_thread():
            driver = conn.connection.driver_connection
            seen.append((sql.split()[0].upper(), bool(driver.autocommit)))

    with _cursor_executes(services, record):
        yield seen


def test_a_sites_reads_on_postgresql_run_outside_a_transaction(
    fed: Federation, services: Services
) -> None:
    """No BEGIN and COMMIT round trips around a site's look-ups; its report's writes stay atomic."""
    if services.database.is_sqlite:
        pytest.skip("PostgreSQL only (make test-postgres): SQLite sessions cost no round trips")
    exp = fed.create_experiment(rounds=1, min_sites=3)
    fed.start(exp)
    services.orchestrator.step()
    assert fed.next_task("site-a", wait=0) is not None  # site-a's token is looked up once
    with autocommitted(services) as seen:
        task = fed.next_task("site-a")
        assert task is not None
        assert fed.train_and_upload("site-a", task).status_code == 200
    assert seen == [
        ("SELECT", True),  # the poll
        ("SELECT", True),  # the model
        ("SELECT", True),  # the upload's checks before the body
        ("WITH", True),  # the report, its event and its round's count: one statement
    ], seen


def _postgresql_only(services: Services) -> None:
    if services.database.is_sqlite:
        pytest.skip("PostgreSQL only (make test-postgres): one statement for the report")


def _site_a_task(fed: Federation, services: Services) -> tuple[str, dict[str, Any]]:
    """A running 3-site experiment (PostgreSQL only) and site-a's task in its first round."""
    _postgresql_only(services)
    exp = fed.create_experiment(rounds=1, min_sites=3)
    fed.start(exp)
    services.orchestrator.step()
    task = fed.next_task("site-a")
    assert task is not None
    return exp, task


def test_the_report_and_its_event_are_stored_together_or_not_at_all(
    fed: Federation, services: Services
) -> None:
    from aggregator.crud import site_requests
    from aggregator.storage.db.models import Event, Task, TaskStatus, utcnow

    exp, task = _site_a_task(fed, services)

    def report(kind: str) -> site_requests.Recorded:
        with services.database.read_session() as session:
            return site_requests.record_report_at_once(
                session,
                task_id=task["task_id"],
                status=TaskStatus.REJECTED,
                now=utcnow(),
                values={"reject_reason": kind},
                event={"kind": kind, "actor": "site:x", "experiment_id": exp, "detail": {"n": 1}},
            )

    def events(kind: str) -> list[Event]:
        with services.database.session() as session:
            return list(session.scalars(select(Event).where(Event.kind == kind)))

    first = report("test.first")
    assert first == site_requests.Recorded(won=True, unreported=2)  # 3 sites, this one reported
    [stored] = events("test.first")
    assert stored.detail == {"n": 1} and stored.experiment_id == exp
    with services.database.session() as session:
        row = session.get(Task, task["task_id"])
        assert row is not None and row.status == TaskStatus.REJECTED
        assert row.reject_reason == "test.first" and row.reported_at is not None
    again = report("test.again")  # the task is no longer open: nothing is written
    assert again == site_requests.Recorded(won=False, unreported=None)
    assert events("test.again") == []
    assert unreported(services, task["task_id"]) == 2


def test_only_the_rounds_last_report_wakes_the_orchestrator(
    fed: Federation, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each report lowers its round's count of unreported tasks, a failure as an upload; the
    upload that brings it to 0 wakes the orchestrator, and no upload counts the round's tasks."""
    exp = fed.create_experiment(rounds=1, min_sites=3)
    fed.start(exp)
    services.orchestrator.step()
    woken: list[int] = []
    real_wake = services.orchestrator.wake

    def wake() -> None:
        woken.append(1)
        real_wake()

    monkeypatch.setattr(services.orchestrator, "wake", wake)
    sqlite = services.database.is_sqlite
    tasks = {name: fed.next_task(name) for name in ("site-a", "site-b", "site-c")}
    assert all(tasks.values())
    assert unreported(services, tasks["site-a"]["task_id"]) == 3  # type: ignore[index]
    failed = fed.client.post(
        f"{API}/tasks/{tasks['site-b']['task_id']}/failure",  # type: ignore[index]
        json={"reason": "out of memory"},
        headers=fed.sh("site-b"),
    )
    assert failed.status_code == 200, failed.text
    assert woken == [1]  # a failure always wakes it (the route's own rule)
    assert unreported(services, tasks["site-a"]["task_id"]) == 2  # type: ignore[index]
    for name, left in (("site-a", 1), ("site-c", 0)):
        task = tasks[name]
        assert task is not None
        with statements(services) as uploaded:
            assert fed.train_and_upload(name, task).status_code == 200
        report = next(i for i, sql in enumerate(uploaded) if sql.startswith(("UPDATE", "WITH")))
        assert not any(sql.startswith("SELECT") for sql in uploaded[report:]), uploaded
        assert unreported(services, task["task_id"]) == left
        # Only the round's last report woke it (on PostgreSQL through its announcement, heard
        # on the listener's thread).
        deadline = time.monotonic() + 10
        while not sqlite and len(woken) < 2 - left and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0 if sqlite else 0.3)  # and no other wake-up comes
        assert len(woken) == 2 - left, woken
    services.orchestrator.step()
    rounds = fed.client.get(f"{API}/experiments/{exp}/rounds", headers=fed.rh).json()
    # Closed at once, not at its deadline: 2 updates of min_sites 3, so a second attempt opens.
    assert [(r["attempt"], r["status"]) for r in rounds] == [(0, "failed"), (1, "open")], rounds


def test_concurrent_reports_of_a_round_count_down_one_by_one(
    fed: Federation, services: Services
) -> None:
    """Reports of one round written at the same moment from several threads each see their
    own figure (the row is held until each report's commit): exactly one sees 0."""
    from aggregator.crud import site_requests
    from aggregator.storage.db.models import TaskStatus, utcnow

    exp = fed.create_experiment(rounds=1, min_sites=3)
    fed.start(exp)
    services.orchestrator.step()
    ids = [fed.next_task(name)["task_id"] for name in ("site-a", "site-b", "site-c")]  # type: ignore[index]

    def report(task_id: str) -> int | None:
        mine: dict[str, Any] = {"task_id": task_id, "now": utcnow()}
        if services.database.is_sqlite:  # a failure, in a transaction
            mine |= {"status": TaskStatus.FAILED, "values": {"failure_reason": "x"}}
            with services.database.session() as session:
                done = site_requests.record_report(session, **mine)
                session.commit()
        else:  # an upload's rejection, in its one statement
            mine |= {"status": TaskStatus.REJECTED, "values": {"reject_reason": "x"}}
            mine["event"] = {"kind": "k", "actor": "a", "experiment_id": exp}
            with services.database.read_session() as session:
                done = site_requests.record_report_at_once(session, **mine)
        assert done.won
        return done.unreported

    seen = all_at_once(report, ids)
    assert sorted(seen) == [0, 1, 2], seen  # type: ignore[type-var]
    assert unreported(services, ids[0]) == 0


def _report_params(exp: str, task: dict[str, Any], reason: str = "x") -> dict[str, Any]:
    import json

    from aggregator.storage.db.models import TaskStatus, utcnow

    return {
        "task_id": task["task_id"],
        "new_status": TaskStatus.REJECTED.value,
        "now": utcnow(),
        "v_reject_reason": reason,
        "e_at": utcnow(),
        "e_kind": "k",
        "e_actor": "a",
        "e_experiment_id": exp,
        "e_detail": json.dumps({}),
    }


def _plan(services: Services, statement: Any, params: dict[str, Any]) -> str:
    """The database's plan for ``statement`` as the app sends it (indexes preferred even on a
    tiny table): ``EXPLAIN`` put before the SQL on its way to the driver."""
    sqlite = services.database.is_sqlite

    def explain(_c: object, _cur: object, sql: str, parameters: Any, *_: object) -> Any:
        return ("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + sql, parameters

    with services.database.session() as session:
        conn = session.connection()
        if not sqlite:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        event.listen(conn, "before_cursor_execute", explain, retval=True)
        try:
            rows = conn.execute(statement, params).cursor.fetchall()
        finally:
            event.remove(conn, "before_cursor_execute", explain)
        session.rollback()
    return "\n".join(str(row[-1] if sqlite else row[0]) for row in rows)


def test_the_reports_statement_reads_one_progress_row_not_the_rounds_tasks(
    fed: Federation, services: Services
) -> None:
    """The report's statement reads its task and its round's ``round_progress`` row by their
    keys. The count of the round's open tasks it replaces read the round's heap pages on every
    upload: about 105 buffers at 1,000 sites, up to 880 after each autovacuum (scale.md,
    sections O and P)."""
    from aggregator.crud import site_requests

    exp, task = _site_a_task(fed, services)
    statement = site_requests._report_at_once_statement(("reject_reason",))
    plan = _plan(services, statement, _report_params(exp, task))
    assert "round_progress_pkey" in plan, plan
    assert "ix_tasks_round_status" not in plan and "ix_tasks_site_status" not in plan, plan
    assert "Bitmap" not in plan and "Aggregate" in plan, plan  # count(*) of won: one row
    sql = " ".join(str(statement.compile(dialect=services.database.engine.dialect)).split())
    assert "FILTER" not in sql, sql


def test_whether_a_round_has_open_tasks_reads_one_entry_on_sqlite_and_no_whole_table(
    fed: Federation, services: Services
) -> None:
    """The orchestrator's ask on every wake-up and tick.

    SQLite: an EXISTS on ``ix_tasks_round_status`` (one entry; a count reads the round's N
    tasks). PostgreSQL: the count over the round (a bitmap scan of its pages): its planner ran
    the EXISTS as a sequential scan of the whole table on a long history (scale.md, section O)."""
    from aggregator.crud import rounds as round_crud
    from aggregator.storage.db.models import OPEN_TASK_STATES, Task

    exp = fed.create_experiment(rounds=1, min_sites=3)
    fed.start(exp)
    services.orchestrator.step()
    task = fed.next_task("site-a")
    assert task is not None
    sent: list[tuple[str, Any]] = []

    def record(_conn: object, _cursor: object, sql: str, params: Any, *_: object) -> None:
        sent.append((sql, params))

    with services.database.session() as session:
        round_id = session.get(Task, task["task_id"]).round_id  # type: ignore[union-attr]
        with _cursor_executes(services, record):
            assert round_crud.has_tasks(session, round_id=round_id, statuses=OPEN_TASK_STATES)
            assert not round_crud.has_tasks(session, round_id=round_id, statuses=["accepted"])
    assert len(sent) == 2, sent
    sqlite = services.database.is_sqlite
    for sql, _ in sent:
        flat = " ".join(sql.split())
        assert ("EXISTS" in flat) == sqlite and ("count(*) FILTER" in flat) != sqlite, flat
    sql, params = sent[0]
    with services.database.session() as session:
        conn = session.connection()
        if not sqlite:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        explain = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN "
        rows = conn.exec_driver_sql(explain + sql, params).fetchall()
        session.rollback()
    plan = "\n".join(str(row[-1] if sqlite else row[0]) for row in rows)
    if sqlite:
        assert "USING COVERING INDEX ix_tasks_round_status (round_id=? AND status=?)" in plan, plan
    else:  # the round's index, by the round only (the FILTER counts the open states)
        assert "ix_tasks_round_status" in plan and "status" not in plan.split("Index Cond")[-1]
    assert "ix_tasks_site_status" not in plan, plan

    # Done: no open task left (the round's other two tasks reported too).
    for name in ("site-a", "site-b", "site-c"):
        mine = task if name == "site-a" else fed.next_task(name)
        assert mine is not None
        assert fed.train_and_upload(name, mine).status_code == 200
    with services.database.session() as session:
        assert not round_crud.has_tasks(session, round_id=round_id, statuses=OPEN_TASK_STATES)
