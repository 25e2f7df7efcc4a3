"""The database work of a site's requests each round, as statements built once per process.

A thousand sites make about four requests each per round, and each request's statements were
built, keyed for SQLAlchemy's compiled cache and turned into ORM objects anew. The statements
here are module constants with bound parameters (their cache key is computed once), read plain
rows where no ORM object is needed, and write with single Core ``UPDATE``/``INSERT`` statements;
they raise the same errors, in the same order, as the ORM code they replace
(``tasks.get_site_task``, ``tasks.ensure_open``, ``rounds.get_global_model``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.orm import Session

from aggregator.crud.announcements import ROUNDS_CHANNEL, announce
from aggregator.errors import ConflictError, NotFoundError
from aggregator.storage.db.models import (
    OPEN_TASK_STATES,
    Event,
    Experiment,
    ExperimentStatus,
    GlobalModel,
    Round,
    RoundProgress,
    RoundStatus,
    Task,
    TaskStatus,
    utcnow,
)

_tasks = cast(Table, Task.__table__)
_rounds = cast(Table, Round.__table__)
_experiments = cast(Table, Experiment.__table__)
_globals = cast(Table, GlobalModel.__table__)
_events = cast(Table, Event.__table__)
_progress = cast(Table, RoundProgress.__table__)

_task_is_open = or_(*(_tasks.c.status == state for state in OPEN_TASK_STATES))

NEXT_TASK = (
    select(
        _tasks.c.id,
        _tasks.c.round_id,
        _tasks.c.round_number,
        _tasks.c.status,
        _tasks.c.seed,
        _tasks.c.model_sha256,
        _tasks.c.model_size,
        _tasks.c.experiment_id,
        _rounds.c.deadline_at,
        _experiments.c.started_at,
    )
    .select_from(
        _tasks.join(_rounds, _rounds.c.id == _tasks.c.round_id).join(
            _experiments, _experiments.c.id == _tasks.c.experiment_id
        )
    )
    .where(
        _tasks.c.site_id == bindparam("site_id"),
        _task_is_open,
        _rounds.c.status == RoundStatus.OPEN,
        _experiments.c.status == ExperimentStatus.RUNNING,
    )
    .order_by(_tasks.c.created_at, _tasks.c.id)
    .limit(1)
)


@dataclass(frozen=True)
class OpenTask:
    """A site's open task as a poll hands it out (a plain row, no ORM object)."""

    id: str
    round_id: str
    round_number: int
    status: str
    seed: int
    model_sha256: str
    model_size: int
    experiment_id: str
    deadline_at: datetime
    started_at: datetime | None


def next_task(session: Session, *, site_id: str) -> OpenTask | None:
    """The oldest unreported task of a site in an open round of a running experiment."""
    row = session.connection().execute(NEXT_TASK, {"site_id": site_id}).first()
    return None if row is None else OpenTask(**row._mapping)


_MODEL_OF = select(_tasks.c.site_id, _tasks.c.model_sha256, _tasks.c.model_size).where(
    _tasks.c.id == bindparam("task_id")
)

UPLOAD_CONTEXT = (
    select(
        _tasks.c.id,
        _tasks.c.site_id,
        _tasks.c.status,
        _tasks.c.update_sha256,
        _tasks.c.reject_reason,
        _tasks.c.seed,
        _tasks.c.experiment_id,
        _rounds.c.number.label("round_number"),
        _rounds.c.attempt.label("round_attempt"),
        _rounds.c.status.label("round_status"),
        _experiments.c.started_at,
        _globals.c.sha256.label("previous_sha256"),
    )
    .select_from(
        _tasks.join(_rounds, _rounds.c.id == _tasks.c.round_id)
        .join(_experiments, _experiments.c.id == _tasks.c.experiment_id)
        .outerjoin(
            _globals,
            and_(
                _globals.c.experiment_id == _tasks.c.experiment_id,
                _globals.c.round == _rounds.c.number - 1,
            ),
        )
    )
    .where(_tasks.c.id == bindparam("task_id"))
)

_EVENT_COLUMNS = ("at", "kind", "actor", "experiment_id", "detail")
INSERT_EVENT_ROW = insert(_events).values(
    {name: bindparam(f"e_{name}", type_=_events.c[name].type) for name in _EVENT_COLUMNS}
)
"""One audit event from ``event_row``'s parameters."""

_reports: dict[tuple[str, ...], Any] = {}


def task_model(session: Session, *, task_id: str, site_id: str) -> tuple[str, int]:
    """The sha256 and size of the global model a task of this site trains from.

    Raises:
        NotFoundError: no such task, or it belongs to another site (not told apart on purpose).
    """
    row = session.connection().execute(_MODEL_OF, {"task_id": task_id}).first()
    if row is None or row.site_id != site_id:
        raise NotFoundError(f"task {task_id!r} not found for this site")
    return str(row.model_sha256), int(row.model_size)


@dataclass(frozen=True)
class UploadContext:
    """What an upload's checks need from its task, round and experiment (one query)."""

    task_id: str
    status: str
    update_sha256: str | None
    reject_reason: str | None
    seed: int
    experiment_id: str
    round_number: int
    round_attempt: int
    round_status: str
    started_at: datetime | None
    previous_sha256: str | None


def upload_context(session: Session, *, task_id: str, site_id: str) -> UploadContext:
    """The task of this site with its round's state and the global model it started from.

    Raises:
        NotFoundError: no such task, or it belongs to another site.
    """
    row = session.connection().execute(UPLOAD_CONTEXT, {"task_id": task_id}).first()
    return upload_context_of(
        None if row is None else row._mapping, task_id=task_id, site_id=site_id
    )


def upload_context_of(
    row: Mapping[Any, Any] | None, *, task_id: str, site_id: str
) -> UploadContext:
    """``UploadContext`` from a row of ``UPLOAD_CONTEXT``.

    Raises:
        NotFoundError: no such task, or it belongs to another site.
    """
    if row is None or row["site_id"] != site_id:
        raise NotFoundError(f"task {task_id!r} not found for this site")
    return UploadContext(
        task_id=row["id"],
        status=row["status"],
        update_sha256=row["update_sha256"],
        reject_reason=row["reject_reason"],
        seed=row["seed"],
        experiment_id=row["experiment_id"],
        round_number=row["round_number"],
        round_attempt=row["round_attempt"],
        round_status=row["round_status"],
        started_at=row["started_at"],
        previous_sha256=row["previous_sha256"],
    )


def require_open(ctx: UploadContext) -> None:
    """``tasks.ensure_open`` on an ``UploadContext``.

    Raises:
        ConflictError: the task already reported, or its round is no longer open.
    """
    if ctx.round_status != RoundStatus.OPEN:
        raise ConflictError(
            f"round {ctx.round_number} (attempt {ctx.round_attempt}) is {ctx.round_status}: "
            "uploads for it are closed"
        )
    if ctx.status not in OPEN_TASK_STATES:
        raise ConflictError(f"task {ctx.task_id} is {ctx.status}: it takes no further report")


def previous_model(ctx: UploadContext) -> str:
    """The sha256 of the global model the task's round started from.

    Raises:
        NotFoundError: that round has not produced a model (``rounds.get_global_model``).
    """
    if ctx.previous_sha256 is None:
        raise NotFoundError(
            f"experiment {ctx.experiment_id} has no global model for round {ctx.round_number - 1}"
        )
    return ctx.previous_sha256


@dataclass(frozen=True)
class Recorded:
    """What a report did: whether it won, and how many of its round's tasks had not reported
    once it was written (``RoundProgress.unreported``, its own report counted; 0: it was the
    round's last). None when it lost, or for a round without a progress row."""

    won: bool
    unreported: int | None


def record_report(
    session: Session, *, task_id: str, status: TaskStatus, now: datetime, values: dict[str, Any]
) -> Recorded:
    """``tasks.record_report`` with its statement built once per set of columns written.

    A report that wins lowers its round's ``RoundProgress`` row in the same transaction; the
    transaction holds that row until it ends, so the reports of a round count down one by one.
    """
    keys = tuple(sorted(values))
    statement = _reports.get(keys)
    if statement is None:
        statement = report_update(keys)
        _reports[keys] = statement
    params = {"task_id": task_id, "new_status": status, "now": now}
    params |= {f"v_{key}": value for key, value in values.items()}
    connection = session.connection()
    if not connection.execute(statement, params).rowcount:
        return Recorded(won=False, unreported=None)
    left = connection.execute(COUNT_DOWN, {"task_id": task_id}).scalar_one_or_none()
    if left == 0:  # the leader's orchestrator, in whichever process, hears it at the commit
        announce(session, ROUNDS_CHANNEL)
    return Recorded(won=True, unreported=left)


def report_update(keys: tuple[str, ...]) -> Any:
    """Compare-and-set an open task of an open round to the report's status and values."""
    open_rounds = select(_rounds.c.id).where(_rounds.c.status == RoundStatus.OPEN)
    return (
        update(_tasks)
        .where(
            _tasks.c.id == bindparam("task_id"), _task_is_open, _tasks.c.round_id.in_(open_rounds)
        )
        .values(
            status=bindparam("new_status"),
            reported_at=bindparam("now"),
            **{key: bindparam(f"v_{key}") for key in keys},
        )
    )


_ROUND_OF_TASK = (
    select(_tasks.c.round_id).where(_tasks.c.id == bindparam("task_id")).scalar_subquery()
)
COUNT_DOWN = (  # one row by its primary key, whatever the round's size
    update(_progress)
    .where(_progress.c.round_id == _ROUND_OF_TASK)
    .values(unreported=_progress.c.unreported - 1)
    .returning(_progress.c.unreported)
)


_reports_at_once: dict[tuple[str, ...], Any] = {}


def record_report_at_once(
    session: Session,
    *,
    task_id: str,
    status: TaskStatus,
    now: datetime,
    values: dict[str, Any],
    event: dict[str, Any],
) -> Recorded:
    """``record_report`` and ``insert_event`` as one PostgreSQL statement that commits by itself.

    For a session without a transaction (``Database.read_session`` on PostgreSQL): one socket
    round trip instead of four (``BEGIN``, ``UPDATE``, ``INSERT``, ``COMMIT``). The event is
    inserted, and the round's ``RoundProgress`` row lowered, only when the report wins, in the
    same statement, so all or none are stored.

    Args:
        event: the event's ``kind``, ``actor``, ``experiment_id`` and ``detail``.
    """
    keys = tuple(sorted(values))
    statement = _reports_at_once.get(keys)
    if statement is None:
        statement = _report_at_once_statement(keys)
        _reports_at_once[keys] = statement
    params = {"task_id": task_id, "new_status": status, "now": now}
    params |= {f"v_{key}": value for key, value in values.items()}
    params |= event_row(event)
    row = session.connection().execute(statement, params).one()
    return Recorded(won=bool(row.won), unreported=row.unreported)


def _report_at_once_statement(keys: tuple[str, ...]) -> Any:
    won = report_update(keys).returning(_tasks.c.round_id).cte("won")
    logged = (
        insert(_events)
        .from_select(
            list(_EVENT_COLUMNS),
            select(
                *(bindparam(f"e_{name}", type_=_events.c[name].type) for name in _EVENT_COLUMNS)
            ).select_from(won),
        )
        .cte("logged")
    )
    # The round's progress row, by its primary key: the statement waits for the row while
    # another report of the round holds it, then lowers the value that report committed
    # (READ COMMITTED re-reads an updated row), so two reports never see the same figure.
    # What it replaces, a count of the round's open tasks over its heap pages, read 105
    # buffers per upload at 1,000 sites and up to 880 after each autovacuum had spread the
    # round's new row versions over the table (scale.md, sections O and P).
    counted = (
        update(_progress)
        .where(_progress.c.round_id.in_(select(won.c.round_id)))
        .values(unreported=_progress.c.unreported - 1)
        .returning(_progress.c.unreported)
        .cte("counted")
    )
    # The round's last report tells every process, the leader's orchestrator among them, when
    # the statement commits (``crud.announcements.ROUNDS_CHANNEL``).
    told = (
        select(func.pg_notify(ROUNDS_CHANNEL, ""))
        .where(counted.c.unreported == 0)
        .scalar_subquery()
    )
    return select(
        select(func.count()).select_from(won).scalar_subquery().label("won"),
        select(counted.c.unreported).scalar_subquery().label("unreported"),
        told.label("told"),
    ).add_cte(logged, counted)


def insert_event(
    session: Session,
    *,
    kind: str,
    actor: str,
    experiment_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """``events.record_event`` as one prepared Core ``INSERT`` sent now (no ORM object)."""
    session.connection().execute(
        INSERT_EVENT_ROW,
        event_row({"kind": kind, "actor": actor, "experiment_id": experiment_id, "detail": detail}),
    )


def event_row(event: dict[str, Any]) -> dict[str, Any]:
    """``INSERT_EVENT_ROW``'s parameters for an event, stamped now.

    Args:
        event: ``kind``, ``actor``, and optionally ``experiment_id`` and ``detail``.
    """
    return {
        "e_at": utcnow(),
        "e_kind": event["kind"],
        "e_actor": event["actor"],
        "e_experiment_id": event.get("experiment_id"),
        "e_detail": event.get("detail") or {},
    }
