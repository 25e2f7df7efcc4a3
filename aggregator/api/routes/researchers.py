"""``/researchers``: the admin creates researchers."""

from __future__ import annotations

from fastapi import APIRouter, status

from aggregator.api.deps import CurrentAdmin, SessionDep
from aggregator.crud import principals
from aggregator.schemas import ResearcherCreate, ResearcherCreated

router = APIRouter(prefix="/researchers", tags=["researchers"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_researcher(
    body: ResearcherCreate, session: SessionDep, _admin: CurrentAdmin
) -> ResearcherCreated:
    """Create a researcher (admin only). The token is shown this once."""
    researcher, token = principals.create_researcher(session, name=body.name)
    session.commit()
    return ResearcherCreated(id=researcher.id, name=researcher.name, token=token)
