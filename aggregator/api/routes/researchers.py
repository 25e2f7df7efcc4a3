"""``/researchers``: the admin creates, rotates and revokes researchers; a researcher its own token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from aggregator.api.deps import CurrentAdmin, CurrentResearcher, SessionDep
from aggregator.crud import principals
from data_specs.researcher import ResearcherCreate, ResearcherCreated

router = APIRouter(prefix="/researchers", tags=["researchers"])
ResearcherId = Annotated[str, Path(min_length=1, max_length=64)]


@router.post("/me/rotate")
def rotate_self(session: SessionDep, researcher: CurrentResearcher) -> ResearcherCreated:
    """Replace the caller's own token; the old one stops working at once."""
    row = principals.get_researcher(session, researcher_id=researcher.id)
    token = principals.rotate_researcher(session, researcher=row, actor=researcher.actor)
    session.commit()
    return ResearcherCreated(id=row.id, name=row.name, token=token)


@router.post("/me/revoke", status_code=status.HTTP_204_NO_CONTENT)
def revoke_self(session: SessionDep, researcher: CurrentResearcher) -> None:
    """Revoke the caller's own token for good (a lost laptop)."""
    row = principals.get_researcher(session, researcher_id=researcher.id)
    principals.revoke_researcher(session, researcher=row, actor=researcher.actor)
    session.commit()


@router.post("/{researcher_id}/rotate")
def rotate(
    researcher_id: ResearcherId, session: SessionDep, _admin: CurrentAdmin
) -> ResearcherCreated:
    """Issue a new token for a researcher (admin only); the old one stops working."""
    row = principals.get_researcher(session, researcher_id=researcher_id)
    token = principals.rotate_researcher(session, researcher=row, actor="admin")
    session.commit()
    return ResearcherCreated(id=row.id, name=row.name, token=token)


@router.post("/{researcher_id}/revoke", status_code=status.HTTP_204_NO_CONTENT)
def revoke(researcher_id: ResearcherId, session: SessionDep, _admin: CurrentAdmin) -> None:
    """Revoke a researcher's token for good (admin only); rotate cannot bring it back."""
    row = principals.get_researcher(session, researcher_id=researcher_id)
    principals.revoke_researcher(session, researcher=row, actor="admin")
    session.commit()


@router.post("", status_code=status.HTTP_201_CREATED)
def create_researcher(
    body: ResearcherCreate, session: SessionDep, _admin: CurrentAdmin
) -> ResearcherCreated:
    """Create a researcher (admin only). The token is shown this once."""
    researcher, token = principals.create_researcher(session, name=body.name)
    session.commit()
    return ResearcherCreated(id=researcher.id, name=researcher.name, token=token)
