"""Experiment lifecycle: create (with the spec's tensor layout), initial model, start, pause, abort."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.consent import approved_sites
from aggregator.crud import experiments as exp_crud
from aggregator.crud.announcements import TASKS_CHANNEL, announce
from aggregator.crud.events import record_event
from aggregator.errors import ConflictError, UnprocessableError
from aggregator.logs import log_event
from aggregator.rounds.planning import apply_auto_plan, spec_layout
from aggregator.storage.blobs import BlobRef, BlobStore
from aggregator.storage.db.id_lists import in_ids
from aggregator.storage.db.models import Experiment, ExperimentStatus, Site, SiteStatus, utcnow
from aggregator.storage.global_models import build_initial_weights, load_weights, store_global
from data_specs.event_kinds import EventKind
from data_specs.researcher.experiments import ExperimentCreate
from data_specs.task_spec import TaskSpec
from data_specs.weights.unet_layout import (
    parameter_count,
    statistic_keys_of,
)

log = logging.getLogger("aggregator.rounds.lifecycle")


def dp_local_keys(spec: TaskSpec, local: tuple[str, ...]) -> tuple[str, ...]:
    """Under client-level DP the norm layers' running statistics also stay at the sites.

    They are data statistics outside the clipped, noised update; averaging them unclipped would
    release them without a guarantee (``docs/privacy.md``). Returned in state-dict order.
    """
    keep = set(local) | set(statistic_keys_of(spec))
    return tuple(k for k in spec_layout(spec)[0] if k in keep)


def create_experiment(
    session: Session,
    *,
    owner_id: str,
    body: ExperimentCreate,
    max_parameters: int | None = None,
) -> Experiment:
    """Create an experiment; FedBN experiments keep their norm layers local, DP ones their
    norm layers' running statistics.

    Raises:
        UnprocessableError: the network has more than ``max_parameters`` parameters.
    """
    params = parameter_count(body.spec)
    if max_parameters is not None and params > max_parameters:
        raise UnprocessableError(
            f"spec: the network has {params} parameters, more than this aggregator's "
            f"max_model_parameters of {max_parameters}"
        )
    expected, norm_keys = spec_layout(body.spec)
    local = norm_keys if body.train.personalization.norm_layers_local else ()
    if body.privacy is not None and body.privacy.dp is not None:
        local = dp_local_keys(body.spec, local)
    experiment = exp_crud.create_experiment(
        session, owner_id=owner_id, body=body, expected=expected, local_keys=local
    )
    session.commit()
    return experiment


def set_initial_model(
    session: Session, *, blobs: BlobStore, experiment: Experiment, checked_path: Path, actor: str
) -> BlobRef:
    """Store a checked uploaded model as global model 0 (re-encoded as round 0, float32)."""
    exp_crud.require_status(experiment, ExperimentStatus.CREATED, action="set the initial model of")
    weights = load_weights(checked_path)
    names = exp_crud.config_of(experiment).class_names
    ref = store_global(
        blobs, weights, spec_hash=experiment.spec_hash, round_number=0, class_names=names
    )
    experiment.initial_model_sha256 = ref.sha256
    record_event(
        session,
        kind=EventKind.EXPERIMENT_INITIAL_MODEL,
        actor=actor,
        experiment_id=experiment.id,
        detail={"sha256": ref.sha256, "size": ref.size},
    )
    session.commit()
    return ref


def start_experiment(
    session: Session,
    *,
    blobs: BlobStore,
    experiment: Experiment,
    actor: str,
    require_consent: bool = True,
) -> list[str]:
    """``created`` -> ``running`` (or resume a paused one); returns sites that may have work now.

    With ``require_consent`` only sites that approved the experiment take part
    (``aggregator.consent``).

    Raises:
        ConflictError: not created or paused, or fewer than ``min_sites`` usable (and approved)
            sites.
    """
    now = utcnow()
    if experiment.status == ExperimentStatus.PAUSED:
        exp_crud.set_paused(session, experiment=experiment, paused=False, now=now, actor=actor)
        announce(session, TASKS_CHANNEL)  # the open round's tasks are visible again
        session.commit()
        return list(experiment.participants or [])
    exp_crud.require_status(experiment, ExperimentStatus.CREATED, action="start")
    cfg = exp_crud.config_of(experiment)
    participants = _participants(session, cfg)
    if require_consent:
        usable = len(participants)
        participants = approved_sites(session, experiment, participants)
        if len(participants) < cfg.min_sites:
            raise ConflictError(
                f"cannot start: {len(participants)} of {usable} usable site(s) approved the "
                f"experiment, min_sites is {cfg.min_sites}; sites approve with "
                "`fedseg site approve` or their agent's accept_experiments"
            )
    if len(participants) < cfg.min_sites:
        raise ConflictError(
            f"cannot start: {len(participants)} usable site(s) (enrolled, or listed and not revoked), "
            f"min_sites is {cfg.min_sites}"
        )
    if cfg.plan == "auto":
        cfg = apply_auto_plan(
            session, experiment=experiment, participants=participants, actor=actor
        )
    if experiment.initial_model_sha256 is not None:
        initial = BlobRef(
            experiment.initial_model_sha256,
            blobs.require(experiment.initial_model_sha256).stat().st_size,
        )
    else:
        weights = build_initial_weights(cfg.spec, cfg.seed)
        initial = store_global(
            blobs,
            weights,
            spec_hash=experiment.spec_hash,
            round_number=0,
            class_names=cfg.class_names,
        )
    exp_crud.mark_started(
        session,
        experiment=experiment,
        participants=participants,
        initial_sha256=initial.sha256,
        initial_size=initial.size,
        now=now,
        actor=actor,
    )
    session.commit()
    log_event(
        log, "experiment.started", experiment_id=experiment.id, participants=len(participants)
    )
    return participants


def pause_experiment(session: Session, *, experiment: Experiment, actor: str) -> None:
    """``running`` -> ``paused``: no tasks handed out, rounds and deadlines frozen."""
    exp_crud.require_status(experiment, ExperimentStatus.RUNNING, action="pause")
    exp_crud.set_paused(session, experiment=experiment, paused=True, now=utcnow(), actor=actor)
    session.commit()


def abort_experiment(session: Session, *, experiment: Experiment, actor: str) -> None:
    """Abort a created, running or paused experiment (final)."""
    exp_crud.require_status(
        experiment,
        ExperimentStatus.CREATED,
        ExperimentStatus.RUNNING,
        ExperimentStatus.PAUSED,
        action="abort",
    )
    exp_crud.mark_aborted(session, experiment=experiment, now=utcnow(), actor=actor)
    session.commit()


def _participants(session: Session, cfg: ExperimentCreate) -> list[str]:
    if cfg.sites is not None:
        query = select(Site.id).where(
            in_ids(session, Site.id, cfg.sites), Site.status != SiteStatus.REVOKED
        )
    else:
        query = select(Site.id).where(Site.status == SiteStatus.ENROLLED)
    return sorted(session.scalars(query))
