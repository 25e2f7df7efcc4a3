"""Tasks as sites see them: the next one to do, and what the site reported on it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from aggregator.crud.experiments import config_of
from aggregator.errors import ConflictError, NotFoundError, require_row
from aggregator.storage.db.models import (
    OPEN_TASK_STATES,
    Experiment,
    ExperimentStatus,
    Round,
    RoundStatus,
    Task,
    TaskStatus,
)
from data_specs.wire import TaskAssignment


def next_task_for_site(session: Session, *, site_id: str) -> tuple[Task, Round, Experiment] | None:
    """The oldest unreported task of a site in an open round of a running experiment."""
    row = session.execute(
        select(Task, Round, Experiment)
        .join(Round, Round.id == Task.round_id)
        .join(Experiment, Experiment.id == Task.experiment_id)
        .where(
            Task.site_id == site_id,
            Task.status.in_(OPEN_TASK_STATES),
            Round.status == RoundStatus.OPEN,
            Experiment.status == ExperimentStatus.RUNNING,
        )
        .order_by(Task.created_at, Task.id)
        .limit(1)
    ).first()
    return None if row is None else (row[0], row[1], row[2])


def mark_delivered(session: Session, *, task: Task, now: datetime) -> None:
    """Note the first time a task was handed to its site."""
    if task.status == TaskStatus.ASSIGNED:
        task.status = TaskStatus.DELIVERED
        task.delivered_at = now


def get_site_task(session: Session, *, task_id: str, site_id: str) -> Task:
    """A task of this site.

    Raises:
        NotFoundError: no such task, or it belongs to another site (not told apart on purpose).
    """
    task = session.get(Task, task_id)
    if task is None or task.site_id != site_id:
        raise NotFoundError(f"task {task_id!r} not found for this site")
    return task


def add_bytes_down(session: Session, *, task_id: str, size: int) -> None:
    """Count bytes served to a site for a task."""
    session.execute(
        update(Task)
        .where(Task.id == task_id)
        .values(bytes_down=Task.bytes_down + size)
        .execution_options(synchronize_session=False)
    )


def ensure_open(session: Session, *, task: Task) -> Round:
    """The task's round if the task still takes a report.

    Raises:
        ConflictError: the task already reported, or its round is no longer open.
    """
    rnd = session.get(Round, task.round_id)
    rnd = require_row(rnd, "round")
    if rnd.status != RoundStatus.OPEN:
        raise ConflictError(
            f"round {rnd.number} (attempt {rnd.attempt}) is {rnd.status}: uploads for it are closed"
        )
    if task.status not in OPEN_TASK_STATES:
        raise ConflictError(f"task {task.id} is {task.status}: it takes no further report")
    return rnd


def record_report(
    session: Session,
    *,
    task_id: str,
    status: TaskStatus,
    now: datetime,
    values: dict[str, Any],
) -> bool:
    """Compare-and-set an open task of an open round to ``status`` with ``values``.

    One UPDATE statement, so a round closing at the same moment either sees this report or
    makes it lose (returns False).
    """
    open_rounds = select(Round.id).where(Round.status == RoundStatus.OPEN)
    result = session.execute(
        update(Task)
        .where(
            Task.id == task_id,
            Task.status.in_(OPEN_TASK_STATES),
            Task.round_id.in_(open_rounds),
        )
        .values(status=status, reported_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def refresh_task(session: Session, *, task_id: str) -> Task:
    """Re-read a task after a compare-and-set."""
    task = session.get(Task, task_id, populate_existing=True)
    if task is None:
        raise NotFoundError(f"task {task_id!r} not found")
    return task


def to_assignment(*, task: Task, rnd: Round, experiment: Experiment) -> TaskAssignment:
    """The wire form of a task: spec, model to fetch, training config with the task's own seed."""
    from sqlalchemy.orm import object_session

    from aggregator.privacy.adaptive_clipping import round_clip_norm
    from aggregator.privacy.secagg_protocol import task_setup

    cfg = config_of(experiment)
    session = object_session(experiment)
    clip = cfg.privacy.dp.clip_norm if cfg.privacy and cfg.privacy.dp else None
    if session is not None:  # adaptive clipping: this round's C
        clip = round_clip_norm(
            session, experiment_id=experiment.id, cfg=cfg, round_number=task.round_number
        )
    return TaskAssignment(
        task_id=task.id,
        experiment_id=experiment.id,
        round=task.round_number,
        spec=cfg.spec,
        spec_hash=experiment.spec_hash,
        model_sha256=task.model_sha256,
        model_size=task.model_size,
        train=cfg.train.model_copy(update={"seed": task.seed}),
        local_keys=list(experiment.local_keys),
        deadline=rnd.deadline_at,
        total_rounds=cfg.rounds,
        clip_norm=clip,
        secagg=task_setup(cfg, rnd, task),
    )
