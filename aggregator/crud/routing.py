"""Sources of the routing bundle: shared personal models and the grants that let sites fetch it."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from aggregator.crud.events import record_event
from aggregator.errors import UnprocessableError
from aggregator.storage.db.models import Experiment, Grant, PersonalModel, Site, SiteStatus
from data_specs.event_kinds import EventKind


def share_personal_model(
    session: Session, *, experiment_id: str, site_id: str, round_number: int, sha256: str, size: int
) -> bool:
    """Store (or replace) a site's personal model of a round; returns False if it was already there."""
    existing = session.scalar(
        select(PersonalModel).where(
            PersonalModel.experiment_id == experiment_id,
            PersonalModel.site_id == site_id,
            PersonalModel.round == round_number,
        )
    )
    if existing is not None and existing.sha256 == sha256:
        return False
    if existing is None:
        session.add(
            PersonalModel(
                experiment_id=experiment_id,
                site_id=site_id,
                round=round_number,
                sha256=sha256,
                size=size,
            )
        )
    else:
        existing.sha256, existing.size = sha256, size
    record_event(
        session,
        kind=EventKind.PERSONAL_SHARED,
        actor=f"site:{site_id}",
        experiment_id=experiment_id,
        detail={"round": round_number, "sha256": sha256},
    )
    return True


def latest_personal_models(
    session: Session, *, experiment_id: str
) -> list[tuple[PersonalModel, str]]:
    """Each site's newest shared personal model with the site name, sorted by site id."""
    newest = (
        select(PersonalModel.site_id, func.max(PersonalModel.round).label("round"))
        .where(PersonalModel.experiment_id == experiment_id)
        .group_by(PersonalModel.site_id)
        .subquery()
    )
    rows = session.execute(
        select(PersonalModel, Site.name)
        .join(
            newest,
            (newest.c.site_id == PersonalModel.site_id) & (newest.c.round == PersonalModel.round),
        )
        .join(Site, Site.id == PersonalModel.site_id)
        .where(PersonalModel.experiment_id == experiment_id)
        .order_by(PersonalModel.site_id)
    ).all()
    return [(row[0], row[1]) for row in rows]


def grant_routing(
    session: Session, *, experiment: Experiment, site_id: str, researcher_id: str
) -> tuple[Grant, str]:
    """Let a site download the experiment's routing bundle (idempotent); returns it with the site name.

    Raises:
        UnprocessableError: the site is unknown or revoked.
    """
    site = session.get(Site, site_id)
    if site is None or site.status == SiteStatus.REVOKED:
        raise UnprocessableError(f"site {site_id!r} is unknown or revoked")
    grant = session.get(Grant, (experiment.id, site_id))
    if grant is None:
        grant = Grant(experiment_id=experiment.id, site_id=site_id, granted_by=researcher_id)
        session.add(grant)
        session.flush()
        record_event(
            session,
            kind=EventKind.GRANT_CREATED,
            actor=f"researcher:{researcher_id}",
            experiment_id=experiment.id,
            detail={"site_id": site_id},
        )
    return grant, site.name


def may_fetch_routing(session: Session, *, experiment: Experiment, site_id: str) -> bool:
    """Granted sites and the experiment's own participants may fetch its routing bundle."""
    if site_id in (experiment.participants or []):
        return True
    return session.get(Grant, (experiment.id, site_id)) is not None
