"""Experiments: create, read, and the status changes of their lifecycle."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from aggregator.crud.events import record_event
from aggregator.errors import ConflictError, NotFoundError, UnprocessableError
from aggregator.storage.db.id_lists import in_ids
from aggregator.storage.db.models import (
    OPEN_TASK_STATES,
    Experiment,
    ExperimentStatus,
    GlobalModel,
    Round,
    RoundStatus,
    Site,
    SiteStatus,
    Task,
    TaskStatus,
)
from data_specs.event_kinds import EventKind
from data_specs.researcher.experiments import ExperimentCreate, ExperimentPublic

Expected = dict[str, tuple[tuple[int, ...], str]]


def create_experiment(
    session: Session,
    *,
    owner_id: str,
    body: ExperimentCreate,
    expected: Expected,
    local_keys: Sequence[str],
) -> Experiment:
    """Create an experiment in status ``created``.

    Args:
        session: the open session.
        owner_id: the researcher creating it.
        body: the request.
        expected: ``{key: (shape, dtype)}`` of the spec's state dict (cached for validation).
        local_keys: keys the server never averages (FedBN norm layers).

    Raises:
        UnprocessableError: ``sites`` names unknown or revoked sites.
    """
    if body.sites is not None:
        known = {
            s.id: s.status
            for s in session.scalars(select(Site).where(in_ids(session, Site.id, body.sites)))
        }
        bad = [s for s in body.sites if known.get(s, SiteStatus.REVOKED) == SiteStatus.REVOKED]
        if bad:
            raise UnprocessableError(f"sites lists unknown or revoked site ids {bad[:10]}")
    experiment = Experiment(
        name=body.name,
        owner_id=owner_id,
        config=body.model_dump(mode="json"),
        spec_hash=body.spec.spec_hash(),
        expected={k: [list(shape), dtype] for k, (shape, dtype) in expected.items()},
        local_keys=list(local_keys),
    )
    session.add(experiment)
    session.flush()
    record_event(
        session,
        kind=EventKind.EXPERIMENT_CREATED,
        actor=f"researcher:{owner_id}",
        experiment_id=experiment.id,
        detail={"name": body.name, "spec_hash": experiment.spec_hash, "rounds": body.rounds},
    )
    return experiment


def get_experiment(
    session: Session, *, experiment_id: str, owner_id: str | None = None
) -> Experiment:
    """An experiment by id (and owner, if given).

    Raises:
        NotFoundError: no such experiment, or it belongs to another researcher.
    """
    experiment = session.get(Experiment, experiment_id)
    if experiment is None or (owner_id is not None and experiment.owner_id != owner_id):
        raise NotFoundError(f"experiment {experiment_id!r} not found")
    return experiment


def list_experiments(session: Session, *, owner_id: str) -> list[Experiment]:
    """The researcher's experiments, newest first."""
    query = select(Experiment).where(Experiment.owner_id == owner_id)
    return list(session.scalars(query.order_by(Experiment.created_at.desc())))


def running_experiment_ids(session: Session) -> list[str]:
    """Ids of every experiment the orchestrator should advance, oldest first."""
    query = select(Experiment.id).where(Experiment.status == ExperimentStatus.RUNNING)
    return list(session.scalars(query.order_by(Experiment.created_at)))


def config_of(experiment: Experiment) -> ExperimentCreate:
    """The experiment's validated configuration."""
    return ExperimentCreate.model_validate(experiment.config)


def expected_of(experiment: Experiment) -> Expected:
    """``{key: (shape, dtype)}`` the experiment's bundles must match."""
    return {k: (tuple(shape), dtype) for k, (shape, dtype) in experiment.expected.items()}


def to_public(experiment: Experiment) -> ExperimentPublic:
    """The API view of an experiment."""
    return ExperimentPublic(
        id=experiment.id,
        name=experiment.name,
        status=experiment.status,
        config=config_of(experiment),
        spec_hash=experiment.spec_hash,
        participants=experiment.participants,
        local_keys=experiment.local_keys,
        initial_model_sha256=experiment.initial_model_sha256,
        current_round=experiment.current_round,
        failure_reason=experiment.failure_reason,
        created_at=experiment.created_at,
        started_at=experiment.started_at,
        finished_at=experiment.finished_at,
    )


def require_status(experiment: Experiment, *allowed: ExperimentStatus, action: str) -> None:
    """Raise ``ConflictError`` unless the experiment is in one of ``allowed``."""
    if experiment.status not in allowed:
        wanted = " or ".join(allowed)
        raise ConflictError(
            f"cannot {action} experiment {experiment.id}: it is {experiment.status}, expected {wanted}"
        )


def mark_started(
    session: Session,
    *,
    experiment: Experiment,
    participants: list[str],
    initial_sha256: str,
    initial_size: int,
    now: datetime,
    actor: str,
) -> None:
    """``created`` -> ``running`` with its participants and global model 0."""
    experiment.status = ExperimentStatus.RUNNING
    experiment.participants = sorted(participants)
    experiment.initial_model_sha256 = initial_sha256
    experiment.started_at = now
    session.add(
        GlobalModel(experiment_id=experiment.id, round=0, sha256=initial_sha256, size=initial_size)
    )
    record_event(
        session,
        kind=EventKind.EXPERIMENT_STARTED,
        actor=actor,
        experiment_id=experiment.id,
        detail={"participants": len(participants), "initial_model_sha256": initial_sha256},
    )


def set_paused(
    session: Session, *, experiment: Experiment, paused: bool, now: datetime, actor: str
) -> None:
    """``running`` <-> ``paused``; resuming gives the open round a fresh deadline."""
    experiment.status = ExperimentStatus.PAUSED if paused else ExperimentStatus.RUNNING
    if not paused:
        deadline_s = config_of(experiment).round_deadline_s
        for rnd in session.scalars(
            select(Round).where(
                Round.experiment_id == experiment.id, Round.status == RoundStatus.OPEN
            )
        ):
            rnd.deadline_at = datetime.fromtimestamp(now.timestamp() + deadline_s, tz=now.tzinfo)
    record_event(
        session,
        kind=EventKind.EXPERIMENT_PAUSED if paused else EventKind.EXPERIMENT_RESUMED,
        actor=actor,
        experiment_id=experiment.id,
    )


def mark_aborted(session: Session, *, experiment: Experiment, now: datetime, actor: str) -> None:
    """Abort: open rounds end, pending tasks are cancelled, uploads are refused from now on."""
    experiment.status = ExperimentStatus.ABORTED
    experiment.finished_at = now
    session.execute(
        update(Round)
        .where(
            Round.experiment_id == experiment.id,
            Round.status.in_([RoundStatus.OPEN, RoundStatus.AGGREGATING]),
        )
        .values(status=RoundStatus.ABORTED, closed_at=now, reason="experiment aborted")
    )
    session.execute(
        update(Task)
        .where(Task.experiment_id == experiment.id, Task.status.in_(OPEN_TASK_STATES))
        .values(status=TaskStatus.CANCELLED)
    )
    record_event(
        session, kind=EventKind.EXPERIMENT_ABORTED, actor=actor, experiment_id=experiment.id
    )
