"""Consent: a hospital's site takes part in an experiment only after approving it.

A site approves in one of two ways:

- a standing policy from its agent's configuration (``accept_experiments``), sent at enrolment
  and at every agent start: ``"*"`` (every experiment), an experiment id, or
  ``"researcher:<name>"`` (every experiment of that researcher);
- an explicit decision on a pending invitation (``fedseg site approve EXPERIMENT``), which also
  overrides the policy (a ``declined`` experiment is never joined).

``start_experiment`` samples only sites that approved, and refuses to start with fewer than
``min_sites`` of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.crud import experiments as exp_crud
from aggregator.crud.events import record_event
from aggregator.errors import ConflictError, NotFoundError
from aggregator.storage.db import Consent, Experiment, ExperimentStatus, Researcher, Site
from aggregator.storage.db.id_lists import in_ids
from aggregator.storage.db.models import utcnow
from data_specs.event_kinds import EventKind
from data_specs.researcher.consent import InvitationPublic

Decision = Literal["approved", "declined"]


def policy_allows(policy: Sequence[str] | None, *, experiment_id: str, owner_name: str) -> bool:
    """Whether a standing policy covers an experiment."""
    allowed = ("*", experiment_id, f"researcher:{owner_name}")
    return any(entry in allowed for entry in policy or ())


def approved_sites(
    session: Session, experiment: Experiment, candidates: Sequence[str]
) -> list[str]:
    """The candidates that approved the experiment (explicitly, or by policy and not declined)."""
    decisions = _pairs(
        session.execute(
            select(Consent.site_id, Consent.decision).where(Consent.experiment_id == experiment.id)
        )
    )
    owner = session.get(Researcher, experiment.owner_id)
    owner_name = owner.name if owner is not None else ""
    policies = _pairs(
        session.execute(
            select(Site.id, Site.accept_policy).where(in_ids(session, Site.id, candidates))
        ).tuples()
    )
    out = []
    for site_id in candidates:
        decision = decisions.get(site_id)
        if decision == "approved" or (
            decision is None
            and policy_allows(
                policies.get(site_id), experiment_id=experiment.id, owner_name=owner_name
            )
        ):
            out.append(site_id)
    return sorted(out)


def set_policy(session: Session, *, site: Site, accept: Sequence[str] | None) -> None:
    """Replace a site's standing consent policy (None or empty: approve one by one)."""
    site.accept_policy = list(accept) if accept else None
    record_event(
        session,
        kind=EventKind.SITE_CONSENT_POLICY,
        actor=f"site:{site.id}",
        detail={"site_id": site.id, "entries": len(accept or ())},
    )


def invitations(session: Session, *, site_id: str) -> list[InvitationPublic]:
    """Experiments that may sample this site, with what they will run and the site's decision."""
    site = session.get(Site, site_id)
    rows = session.scalars(
        select(Experiment)
        .where(Experiment.status.in_((ExperimentStatus.CREATED, ExperimentStatus.RUNNING)))
        .order_by(Experiment.created_at)
    )
    decisions = _pairs(
        session.execute(
            select(Consent.experiment_id, Consent.decision).where(Consent.site_id == site_id)
        )
    )
    out = []
    for experiment in rows:
        cfg = exp_crud.config_of(experiment)
        if cfg.sites is not None and site_id not in cfg.sites:
            continue
        if experiment.status == ExperimentStatus.RUNNING and site_id not in (
            experiment.participants or []
        ):
            continue
        owner = session.get(Researcher, experiment.owner_id)
        owner_name = owner.name if owner is not None else "?"
        decision = decisions.get(experiment.id)
        if (
            decision is None
            and site is not None
            and policy_allows(
                site.accept_policy, experiment_id=experiment.id, owner_name=owner_name
            )
        ):
            decision = "approved"
        train = cfg.train
        out.append(
            InvitationPublic(
                experiment_id=experiment.id,
                name=experiment.name,
                researcher=owner_name,
                status=experiment.status,
                decision=decision or "pending",
                spec=cfg.spec,
                rounds=cfg.rounds,
                min_sites=cfg.min_sites,
                local_epochs=train.local_epochs,
                max_steps=train.max_steps,
                codec=train.codec.name,
                update_kind=train.update_kind,
                personalization=train.personalization.method,
                personal_models_shared_with_researcher=True,
                strategy=cfg.strategy.name,
            )
        )
    return out


def decide(session: Session, *, site_id: str, experiment_id: str, decision: Decision) -> None:
    """Record a site's decision on an experiment that has not started yet.

    Raises:
        NotFoundError: no such experiment, or one that does not invite this site.
        ConflictError: the experiment has started or ended (participants are fixed at start).
    """
    experiment = session.get(Experiment, experiment_id)
    if experiment is None:
        raise NotFoundError(f"experiment {experiment_id!r} not found")
    cfg = exp_crud.config_of(experiment)
    if cfg.sites is not None and site_id not in cfg.sites:
        raise NotFoundError(f"experiment {experiment_id!r} does not invite this site")
    if experiment.status != ExperimentStatus.CREATED:
        raise ConflictError(
            f"experiment {experiment_id!r} is {experiment.status}; decisions are taken before "
            "it starts"
        )
    row = session.get(Consent, (experiment_id, site_id))
    if row is None:
        session.add(Consent(experiment_id=experiment_id, site_id=site_id, decision=decision))
    else:
        row.decision, row.decided_at = decision, utcnow()
    record_event(
        session,
        kind=EventKind(f"site.{decision}"),
        actor=f"site:{site_id}",
        experiment_id=experiment_id,
        detail={"site_id": site_id},
    )


def _pairs(result: Any) -> dict[Any, Any]:
    """``{first: second}`` of a two-column result (a ``Result`` is not a mapping)."""
    return {row[0]: row[1] for row in result}
