"""Round and experiment transitions shared by the orchestrator: open a round, complete, fail."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.crud import rounds as round_crud
from aggregator.crud.events import record_event
from aggregator.logs import log_event
from aggregator.rounds.sampling import derive_seed, sample_sites
from aggregator.storage.blobs import BlobStore
from aggregator.storage.db import Experiment, ExperimentStatus, Site, SiteStatus
from aggregator.storage.db.id_lists import in_ids
from aggregator.storage.global_models import store_float16_copy
from data_specs.event_kinds import EventKind
from data_specs.researcher.experiments import ExperimentCreate

log = logging.getLogger("aggregator.rounds.orchestrator")
_SYSTEM = "system"


def site_names(session: Session, site_ids: Sequence[str]) -> dict[str, str]:
    """``{site id: site name}`` of the given sites."""
    rows = session.execute(select(Site.id, Site.name).where(in_ids(session, Site.id, site_ids)))
    return {site_id: name for site_id, name in rows}


def open_round(
    session: Session,
    blobs: BlobStore,
    experiment: Experiment,
    cfg: ExperimentCreate,
    number: int,
    attempt: int,
    now: datetime,
) -> set[str]:
    """Sample round ``number`` (attempt ``attempt``) and give each sampled site a task.

    Revoked participants are left out; too few usable sites fail the experiment. The served
    model is the global model of round ``number - 1`` (its float16 copy when asked for).

    Returns:
        The sampled site ids (whose long polls should be woken).
    """
    participants = experiment.participants or []
    revoked = set(
        session.scalars(
            select(Site.id).where(
                in_ids(session, Site.id, participants), Site.status == SiteStatus.REVOKED
            )
        )
    )
    available = [p for p in participants if p not in revoked]
    if len(available) < cfg.min_sites:
        fail_experiment(
            session,
            experiment,
            now,
            f"round {number}: only {len(available)} participating site(s) are not revoked, "
            f"min_sites is {cfg.min_sites}",
        )
        return set()
    # Sample and seed by site name (unique, chosen by the researcher), not by the random id, so
    # the same experiment on a fresh aggregator with the same site names picks the same sites
    # and the same training seeds.
    names = site_names(session, available)
    by_name = {names[s]: s for s in available}
    sampled = [
        by_name[n]
        for n in sample_sites(
            list(by_name),
            fraction=cfg.fraction,
            min_sites=cfg.min_sites,
            seed=cfg.seed,
            round_number=number,
            attempt=attempt,
        )
    ]
    model = round_crud.get_global_model(
        session, experiment_id=experiment.id, round_number=number - 1
    )
    sha, size = model.sha256, model.size
    if cfg.train.codec.downlink_float16:
        if model.f16_sha256 is None or not blobs.exists(model.f16_sha256):
            half = store_float16_copy(blobs, model.sha256)
            model.f16_sha256, model.f16_size = half.sha256, half.size
        sha, size = model.f16_sha256, model.f16_size or 0
    round_crud.create_round(
        session,
        experiment_id=experiment.id,
        number=number,
        attempt=attempt,
        sampled=sampled,
        opened_at=now,
        deadline_at=now + timedelta(seconds=cfg.round_deadline_s),
        seeds={s: derive_seed(cfg.seed, number, names[s]) for s in sampled},
        model_sha256=sha,
        model_size=size,
    )
    record_event(
        session,
        kind=EventKind.ROUND_OPENED,
        actor=_SYSTEM,
        experiment_id=experiment.id,
        detail={"round": number, "attempt": attempt, "sampled": sampled},
    )
    log_event(
        log,
        "round.opened",
        experiment_id=experiment.id,
        round=number,
        attempt=attempt,
        sampled=len(sampled),
    )
    return set(sampled)


def complete_experiment(session: Session, experiment: Experiment, now: datetime) -> None:
    """Mark an experiment completed (every round aggregated)."""
    experiment.status = ExperimentStatus.COMPLETED
    experiment.finished_at = now
    record_event(
        session,
        kind=EventKind.EXPERIMENT_COMPLETED,
        actor=_SYSTEM,
        experiment_id=experiment.id,
        detail={"rounds": experiment.current_round},
    )
    log_event(
        log,
        "experiment.completed",
        experiment_id=experiment.id,
        rounds=experiment.current_round,
    )


def fail_experiment(session: Session, experiment: Experiment, now: datetime, reason: str) -> None:
    """Mark an experiment failed with its reason (kept to 1000 characters)."""
    experiment.status = ExperimentStatus.FAILED
    experiment.failure_reason = reason[:1000]
    experiment.finished_at = now
    record_event(
        session,
        kind=EventKind.EXPERIMENT_FAILED,
        actor=_SYSTEM,
        experiment_id=experiment.id,
        detail={"reason": reason},
    )
    log_event(
        log,
        "experiment.failed",
        level=logging.WARNING,
        experiment_id=experiment.id,
        reason=reason,
    )
