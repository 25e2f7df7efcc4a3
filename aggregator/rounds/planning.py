"""``plan: auto``: plan an experiment from its sites' fingerprints when it starts."""

from __future__ import annotations

import functools
import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.crud import experiments as exp_crud
from aggregator.crud import fingerprints as fp_crud
from aggregator.crud.events import record_event
from aggregator.errors import ConflictError
from aggregator.logs import log_event
from aggregator.storage.db.id_lists import in_ids
from aggregator.storage.db.models import Experiment, Site
from data_specs.event_kinds import EventKind
from data_specs.plan import ExperimentPlan, PlanError, combined_class_frequencies, make_plan
from data_specs.researcher.experiments import ExperimentCreate
from data_specs.task_spec import TaskSpec
from data_specs.weights.unet_layout import norm_keys_of, unet_layout

log = logging.getLogger("aggregator.rounds.planning")
Expected = dict[str, tuple[tuple[int, ...], str]]


@functools.lru_cache(maxsize=16)
def spec_layout(spec: TaskSpec) -> tuple[Expected, tuple[str, ...]]:
    """``(expected tensors, FedBN norm keys)`` of a spec's U-Net, by arithmetic (no torch)."""
    return unet_layout(spec), norm_keys_of(spec)


def apply_auto_plan(
    session: Session, *, experiment: Experiment, participants: list[str], actor: str
) -> ExperimentCreate:
    """Plan the experiment from its participants' fingerprints and make the plan its config.

    The planned spec and batch size replace the researcher's in the stored configuration (so
    tasks, validation and routing bundles follow the plan); the plan itself is kept for
    ``GET /experiments/{id}/plan``.

    Args:
        session: the open session (the caller commits).
        experiment: a created experiment whose config says ``plan: auto``.
        participants: the site ids it will start with.
        actor: who starts it, for the audit log.

    Returns:
        The planned configuration.

    Raises:
        ConflictError: a participant has sent no fingerprint yet, the fingerprints cannot be
            planned together, or an uploaded initial model does not fit the planned spec.
    """
    cfg = exp_crud.config_of(experiment)
    found = fp_crud.fingerprints_of(session, site_ids=participants)
    missing = [s for s in participants if s not in found]
    if missing:
        names = sorted(session.scalars(select(Site.name).where(in_ids(session, Site.id, missing))))
        raise ConflictError(
            f"cannot plan experiment {experiment.id}: no dataset fingerprint yet from site(s) "
            f"{names[:10]}; start their agents (they send one at start-up) and try again"
        )
    try:
        plan = make_plan(list(found.values()), cfg.spec, cfg.plan_options)
    except PlanError as exc:
        raise ConflictError(f"cannot plan experiment {experiment.id}: {exc}") from exc
    spec_hash = plan.spec.spec_hash()
    if experiment.initial_model_sha256 is not None and spec_hash != experiment.spec_hash:
        raise ConflictError(
            f"cannot start experiment {experiment.id}: its initial model was uploaded for the "
            "requested spec, but plan: auto changes the network; upload none, or drop plan: auto"
        )
    train = cfg.train.model_copy(update={"batch_size": plan.batch_size})
    planned = ExperimentCreate.model_validate(
        {
            **cfg.model_dump(mode="json"),
            "spec": plan.spec.model_dump(mode="json"),
            "train": train.model_dump(mode="json"),
        }
    )
    expected, norm_keys = spec_layout(plan.spec)
    fedbn = planned.train.personalization.norm_layers_local
    experiment.config = planned.model_dump(mode="json")
    experiment.spec_hash = spec_hash
    experiment.expected = {k: [list(shape), dtype] for k, (shape, dtype) in expected.items()}
    experiment.local_keys = list(norm_keys) if fedbn else []
    fp_crud.store_plan(session, experiment_id=experiment.id, plan=plan)
    record_event(
        session,
        kind=EventKind.EXPERIMENT_PLANNED,
        actor=actor,
        experiment_id=experiment.id,
        detail={"spec_hash": spec_hash, "sites": plan.num_sites, "batch_size": plan.batch_size},
    )
    log_event(log, "experiment.planned", experiment_id=experiment.id, spec_hash=spec_hash)
    return planned


def federation_class_prior(session: Session, *, experiment_id: str) -> list[float] | None:
    """The federation's share of voxels per class for an experiment (background first).

    From the stored plan when the experiment has one, else from the fingerprints of its
    participants (or listed sites); None when any of them has sent no fingerprint.

    Args:
        session: the open session.
        experiment_id: the experiment. Example: ``"3f2a..."``.
    """
    plan = fp_crud.get_plan(session, experiment_id=experiment_id)
    if plan is not None:
        return list(plan.class_frequencies)
    experiment = exp_crud.get_experiment(session, experiment_id=experiment_id)
    sites = experiment.participants or exp_crud.config_of(experiment).sites
    if not sites:
        return None
    found = fp_crud.fingerprints_of(session, site_ids=sites)
    if len(found) != len(set(sites)):
        return None
    try:
        return combined_class_frequencies(list(found.values()))
    except PlanError:
        return None


def read_plan(session: Session, *, experiment_id: str) -> ExperimentPlan | None:
    """The plan an experiment started with, if it asked for one."""
    return fp_crud.get_plan(session, experiment_id=experiment_id)
