"""The audit log: record an event inside the caller's transaction, list what a researcher may see."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from aggregator.storage.db.models import Event, Experiment, Site
from data_specs.event_kinds import EventKind


def record_event(
    session: Session,
    *,
    kind: EventKind,
    actor: str,
    experiment_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> Event:
    """Add an audit event to the session (committed with the change it describes).

    Args:
        session: the open session.
        kind: the event kind. Example: ``EventKind.UPDATE_ACCEPTED``.
        actor: ``"researcher:<id>"``, ``"site:<id>"``, ``"admin"`` or ``"system"``.
        experiment_id: the experiment concerned, if any.
        detail: small JSON facts (ids, counts, reasons); never tokens or file contents.
    """
    event = Event(kind=kind, actor=actor, experiment_id=experiment_id, detail=detail or {})
    session.add(event)
    return event


def list_events(
    session: Session,
    *,
    researcher_id: str,
    experiment_id: str | None = None,
    after_id: int = 0,
    limit: int = 200,
) -> list[Event]:
    """Events of the researcher's experiments plus federation-wide ones about it, oldest first.

    Args:
        session: the open session.
        researcher_id: the caller.
        experiment_id: only this experiment's events. Default all.
        after_id: only events with a larger id (paging). Default 0.
        limit: at most this many. Default 200.
    """
    owned = select(Experiment.id).where(Experiment.owner_id == researcher_id)
    my_sites = select(Site.id).where(Site.registered_by == researcher_id)
    query = select(Event).where(Event.id > after_id)
    if experiment_id is not None:
        query = query.where(Event.experiment_id == experiment_id, Event.experiment_id.in_(owned))
    else:
        # Federation-wide events only where they concern the caller: its own acts, its own
        # registration, or sites it registered. Other researchers' registrations stay private.
        mine = or_(
            Event.actor == f"researcher:{researcher_id}",
            Event.detail["researcher_id"].as_string() == researcher_id,
            Event.detail["site_id"].as_string().in_(my_sites),
        )
        query = query.where(
            or_(and_(Event.experiment_id.is_(None), mine), Event.experiment_id.in_(owned))
        )
    return list(session.scalars(query.order_by(Event.id).limit(limit)))
