"""Dataset fingerprints and plans: sites send theirs, researchers read them and experiments' plans."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel

from aggregator.api.deps import CurrentResearcher, CurrentSite, SessionDep
from aggregator.crud import experiments as exp_crud
from aggregator.crud import fingerprints as fp_crud
from aggregator.crud import principals
from aggregator.crud.events import record_event
from aggregator.errors import NotFoundError
from data_specs.event_kinds import EventKind
from data_specs.manifests.fingerprint import DatasetFingerprint
from data_specs.plan import ExperimentPlan

router = APIRouter(tags=["plan"])


class FingerprintReceipt(BaseModel):
    """The aggregator's answer to a fingerprint: its digest and whether it replaced another."""

    sha256: str
    changed: bool
    updated_at: datetime


@router.put("/sites/me/fingerprint")
def put_fingerprint(
    body: DatasetFingerprint, session: SessionDep, site: CurrentSite
) -> FingerprintReceipt:
    """A site sends its dataset fingerprint (aggregates only; replaces the previous one)."""
    row, changed = fp_crud.put_site_fingerprint(session, site_id=site.id, fingerprint=body)
    if changed:
        record_event(
            session,
            kind=EventKind.SITE_FINGERPRINT,
            actor=site.actor,
            detail={"sha256": row.sha256, "num_cases": body.num_cases},
        )
    session.commit()
    return FingerprintReceipt(sha256=row.sha256, changed=changed, updated_at=row.updated_at)


@router.get("/sites/{site_id}/fingerprint")
def read_fingerprint(
    site_id: str, session: SessionDep, _researcher: CurrentResearcher
) -> DatasetFingerprint:
    """The latest fingerprint a site sent."""
    principals.get_site(session, site_id=site_id)
    fingerprint = fp_crud.get_site_fingerprint(session, site_id=site_id)
    if fingerprint is None:
        raise NotFoundError(f"site {site_id!r} has sent no dataset fingerprint yet")
    return fingerprint


@router.get("/experiments/{experiment_id}/plan")
def read_plan(
    experiment_id: str, session: SessionDep, researcher: CurrentResearcher
) -> ExperimentPlan:
    """The plan an experiment with ``plan: auto`` started with."""
    experiment = exp_crud.get_experiment(
        session, experiment_id=experiment_id, owner_id=researcher.id
    )
    plan = fp_crud.get_plan(session, experiment_id=experiment_id)
    if plan is None:
        when = (
            "asks for no plan" if exp_crud.config_of(experiment).plan is None else "has not started"
        )
        raise NotFoundError(f"experiment {experiment_id} has no plan: it {when}")
    return plan
