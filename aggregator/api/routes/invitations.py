"""``/invitations``: a site sees the experiments that may sample it and approves or declines them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from aggregator import consent
from aggregator.api.deps import CurrentSite, SessionDep
from data_specs.researcher.consent import InvitationPublic

router = APIRouter(prefix="/invitations", tags=["consent"])
ExperimentId = Annotated[str, Path(min_length=1, max_length=64)]


@router.get("")
def list_invitations(session: SessionDep, site: CurrentSite) -> list[InvitationPublic]:
    """Experiments that may sample the calling site: what each runs, and the site's decision."""
    return consent.invitations(session, site_id=site.id)


@router.post("/{experiment_id}/approve")
def approve(
    experiment_id: ExperimentId, session: SessionDep, site: CurrentSite
) -> InvitationPublic:
    """Approve an experiment before it starts; only approved sites are sampled."""
    return _decide(session, site.id, experiment_id, "approved")


@router.post("/{experiment_id}/decline")
def decline(
    experiment_id: ExperimentId, session: SessionDep, site: CurrentSite
) -> InvitationPublic:
    """Decline an experiment (overrides a standing ``accept_experiments`` policy)."""
    return _decide(session, site.id, experiment_id, "declined")


def _decide(
    session: SessionDep, site_id: str, experiment_id: str, decision: consent.Decision
) -> InvitationPublic:
    consent.decide(session, site_id=site_id, experiment_id=experiment_id, decision=decision)
    session.commit()
    return next(
        i for i in consent.invitations(session, site_id=site_id) if i.experiment_id == experiment_id
    )
