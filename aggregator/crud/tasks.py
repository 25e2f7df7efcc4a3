"""Tasks as sites see them: the next one to do, and what the site reported on it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, defer

from aggregator.crud import site_requests
from aggregator.crud.experiment_facts import ExperimentFacts, experiment_facts
from aggregator.errors import ConflictError, NotFoundError, require_row
from aggregator.storage.db.models import (
    OPEN_TASK_STATES,
    Round,
    RoundStatus,
    Task,
    TaskStatus,
)
from data_specs.wire import TaskAssignment


def next_task_for_site(
    session: Session, *, site_id: str
) -> tuple[site_requests.OpenTask, ExperimentFacts] | None:
    """The oldest unreported task of a site in an open round of a running experiment.

    A plain row (no ORM objects; the round's O(sites) ``sampled`` list is not read) and the
    experiment's cached facts: a poll's cost does not grow with the federation.
    """
    task = site_requests.next_task(session, site_id=site_id)
    if task is None:
        return None
    facts = experiment_facts(session, experiment_id=task.experiment_id, started_at=task.started_at)
    return task, facts


def get_site_task(session: Session, *, task_id: str, site_id: str) -> Task:
    """A task of this site.

    Raises:
        NotFoundError: no such task, or it belongs to another site (not told apart on purpose).
    """
    task = session.get(Task, task_id)
    if task is None or task.site_id != site_id:
        raise NotFoundError(f"task {task_id!r} not found for this site")
    return task


def ensure_open(session: Session, *, task: Task) -> Round:
    """The task's round if the task still takes a report.

    Raises:
        ConflictError: the task already reported, or its round is no longer open.
    """
    rnd = session.get(Round, task.round_id, options=[defer(Round.sampled)])
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
    makes it lose (returns False). A report that wins also lowers the round's ``RoundProgress``.
    """
    return site_requests.record_report(
        session, task_id=task_id, status=status, now=now, values=values
    ).won


def refresh_task(session: Session, *, task_id: str) -> Task:
    """Re-read a task after a compare-and-set."""
    task = session.get(Task, task_id, populate_existing=True)
    if task is None:
        raise NotFoundError(f"task {task_id!r} not found")
    return task


def to_assignment(
    session: Session | None, *, task: site_requests.OpenTask, facts: ExperimentFacts
) -> TaskAssignment:
    """The wire form of a task: spec, model to fetch, training config with the task's own seed.

    ``session`` is read only for an experiment with privacy settings (the round's clipping
    norm, secure aggregation's set-up); without them it may be None.
    """
    cfg = facts.cfg
    clip, secagg = None, None
    if cfg.privacy is not None:
        from aggregator.privacy.adaptive_clipping import round_clip_norm
        from aggregator.privacy.secagg_protocol import task_setup

        if session is None:
            raise ValueError("the assignment of a private experiment's task reads its round")
        # This round's C (adaptive clipping), else the fixed one, else None.
        clip = round_clip_norm(
            session, experiment_id=facts.id, cfg=cfg, round_number=task.round_number
        )
        if cfg.privacy.secure_aggregation is not None:
            rnd = require_row(session.get(Round, task.round_id), "round")
            secagg = task_setup(cfg, rnd, require_row(session.get(Task, task.id), "task"))
    return TaskAssignment(
        task_id=task.id,
        experiment_id=facts.id,
        round=task.round_number,
        spec=cfg.spec,
        spec_hash=facts.spec_hash,
        model_sha256=task.model_sha256,
        model_size=task.model_size,
        train=cfg.train.model_copy(update={"seed": task.seed}),
        local_keys=list(facts.local_keys),
        deadline=task.deadline_at,
        total_rounds=cfg.rounds,
        clip_norm=clip,
        secagg=secagg,
    )
