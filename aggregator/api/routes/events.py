"""``/events``: the audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from aggregator.api.deps import CurrentResearcher, SessionDep
from aggregator.crud.events import list_events
from data_specs.researcher import EventPublic

router = APIRouter(prefix="/events", tags=["events"])


@router.get("")
def get_events(
    session: SessionDep,
    researcher: CurrentResearcher,
    experiment_id: Annotated[str | None, Query(max_length=64)] = None,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[EventPublic]:
    """Events of the caller's experiments and federation-wide ones, oldest first (page with ``after``)."""
    events = list_events(
        session,
        researcher_id=researcher.id,
        experiment_id=experiment_id,
        after_id=after,
        limit=limit,
    )
    return [EventPublic.model_validate(e) for e in events]
