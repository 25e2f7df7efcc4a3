"""Researchers and sites: creation, enrollment, rotation, revocation and token lookup."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregator.auth import hash_token, new_token
from aggregator.crud.announcements import TOKENS_CHANNEL, announce
from aggregator.crud.events import record_event
from aggregator.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
)
from aggregator.storage.db.models import Researcher, Site, SiteStatus, utcnow
from data_specs.event_kinds import EventKind

# Set in ``session.info`` by a change to who a token belongs to; the API's principal cache
# empties itself when such a session commits (``aggregator.api.principal_cache``).
TOKENS_CHANGED = "fedseg.tokens_changed"


def mark_changed(session: Session) -> None:
    """Note that this session revokes, rotates or issues a token.

    Other processes sharing a PostgreSQL database hear of it when the session commits
    (``aggregator.crud.announcements``).
    """
    session.info[TOKENS_CHANGED] = True
    announce(session, TOKENS_CHANNEL)


def create_researcher(
    session: Session, *, name: str, actor: str = "admin"
) -> tuple[Researcher, str]:
    """Create a researcher; returns it with its token (shown once, stored hashed).

    Raises:
        ConflictError: the name is taken.
    """
    if session.scalar(select(Researcher.id).where(Researcher.name == name)) is not None:
        raise ConflictError(f"a researcher named {name!r} already exists")
    token = new_token()
    researcher = Researcher(name=name, token_hash=hash_token(token))
    session.add(researcher)
    _flush(session, f"a researcher named {name!r} already exists")
    record_event(
        session,
        kind=EventKind.RESEARCHER_CREATED,
        actor=actor,
        detail={"researcher_id": researcher.id},
    )
    return researcher, token


def researcher_by_token(session: Session, *, token: str) -> Researcher | None:
    """The (not revoked) researcher a bearer token belongs to, if any."""
    return session.scalar(
        select(Researcher).where(
            Researcher.token_hash == hash_token(token), Researcher.revoked_at.is_(None)
        )
    )


def token_expired(issued_at: datetime | None, ttl_days: float | None) -> bool:
    """Whether a token issued at ``issued_at`` is past ``ttl_days`` (never, without a TTL)."""
    if ttl_days is None or issued_at is None:
        return False
    return utcnow() - issued_at > timedelta(days=ttl_days)


def get_researcher(session: Session, *, researcher_id: str) -> Researcher:
    """A researcher by id.

    Raises:
        NotFoundError: no such researcher.
    """
    researcher = session.get(Researcher, researcher_id)
    if researcher is None:
        raise NotFoundError(f"researcher {researcher_id!r} not found")
    return researcher


def rotate_researcher(session: Session, *, researcher: Researcher, actor: str) -> str:
    """Issue a new token for a researcher; the old one stops working at once.

    Raises:
        ConflictError: the researcher was revoked (revocation is final).
    """
    if researcher.revoked_at is not None:
        raise ConflictError(f"researcher {researcher.id!r} was revoked; revocation is final")
    token = new_token()
    researcher.token_hash = hash_token(token)
    researcher.token_issued_at = utcnow()
    mark_changed(session)
    record_event(
        session,
        kind=EventKind.RESEARCHER_ROTATED,
        actor=actor,
        detail={"researcher_id": researcher.id},
    )
    return token


def revoke_researcher(session: Session, *, researcher: Researcher, actor: str) -> None:
    """Revoke a researcher's token for good (the admin may create a new researcher)."""
    if researcher.revoked_at is None:
        mark_changed(session)
        researcher.revoked_at = utcnow()
        # An unusable hash: no token hashes to it, and the unique column stays unique.
        researcher.token_hash = hash_token(f"revoked:{researcher.id}:{new_token()}")
        record_event(
            session,
            kind=EventKind.RESEARCHER_REVOKED,
            actor=actor,
            detail={"researcher_id": researcher.id},
        )


def register_site(session: Session, *, name: str, researcher_id: str) -> tuple[Site, str]:
    """Register a site; returns it with a one-time enrollment token.

    Raises:
        ConflictError: the name is taken.
    """
    if session.scalar(select(Site.id).where(Site.name == name)) is not None:
        raise ConflictError(f"a site named {name!r} already exists")
    token = new_token()
    site = Site(name=name, registered_by=researcher_id, enrollment_token_hash=hash_token(token))
    session.add(site)
    _flush(session, f"a site named {name!r} already exists")
    record_event(
        session,
        kind=EventKind.SITE_REGISTERED,
        actor=f"researcher:{researcher_id}",
        detail={"site_id": site.id},
    )
    return site, token


def list_sites(session: Session) -> list[Site]:
    """Every site, by name."""
    return list(session.scalars(select(Site).order_by(Site.name)))


def get_site(session: Session, *, site_id: str) -> Site:
    """A site by id.

    Raises:
        NotFoundError: no such site.
    """
    site = session.get(Site, site_id)
    if site is None:
        raise NotFoundError(f"site {site_id!r} not found")
    return site


def enroll_site(
    session: Session, *, enrollment_token: str, max_samples: int | None = None
) -> tuple[Site, str]:
    """Exchange a one-time enrollment token for a site token (the enrollment token is consumed).

    ``max_samples`` (the training cases the site declares) caps the sample counts its updates
    may claim.

    Raises:
        AuthenticationError: the token is unknown or already used.
    """
    site = session.scalar(
        select(Site).where(Site.enrollment_token_hash == hash_token(enrollment_token))
    )
    if site is None or site.status == SiteStatus.REVOKED:
        raise AuthenticationError("enrollment token is unknown or was already used")
    token = new_token()
    mark_changed(session)  # a re-enrolment after a rotation replaces the site's token
    site.token_hash = hash_token(token)
    site.enrollment_token_hash = None
    site.status = SiteStatus.ENROLLED
    site.enrolled_at = site.last_seen_at = site.token_issued_at = utcnow()
    if max_samples is not None:
        site.max_samples = max_samples
    record_event(
        session, kind=EventKind.SITE_ENROLLED, actor=f"site:{site.id}", detail={"site_id": site.id}
    )
    return site, token


def rotate_site(session: Session, *, site_id: str, researcher_id: str) -> tuple[Site, str]:
    """Revoke a site's token and issue a new enrollment token.

    Raises:
        NotFoundError: no such site.
        PermissionDeniedError: the site was registered by another researcher.
        ConflictError: the site was revoked (final: register a new site instead).
    """
    site = _owned_site(session, site_id=site_id, researcher_id=researcher_id)
    if site.status == SiteStatus.REVOKED:
        raise ConflictError(
            f"site {site_id!r} was revoked and revocation is final; register a new site instead"
        )
    token = new_token()
    mark_changed(session)
    site.token_hash = None
    site.enrollment_token_hash = hash_token(token)
    site.status = SiteStatus.REGISTERED
    record_event(
        session,
        kind=EventKind.SITE_ROTATED,
        actor=f"researcher:{researcher_id}",
        detail={"site_id": site.id},
    )
    return site, token


def revoke_site(session: Session, *, site_id: str, researcher_id: str) -> Site:
    """Revoke a site's token and any pending enrollment token.

    Raises:
        NotFoundError: no such site.
        PermissionDeniedError: the site was registered by another researcher.
    """
    site = _owned_site(session, site_id=site_id, researcher_id=researcher_id)
    mark_changed(session)
    site.token_hash = None
    site.enrollment_token_hash = None
    site.status = SiteStatus.REVOKED
    record_event(
        session,
        kind=EventKind.SITE_REVOKED,
        actor=f"researcher:{researcher_id}",
        detail={"site_id": site.id},
    )
    return site


def site_by_token(session: Session, *, token: str) -> Site | None:
    """The enrolled site a bearer token belongs to, if any."""
    return session.scalar(
        select(Site).where(Site.token_hash == hash_token(token), Site.status == SiteStatus.ENROLLED)
    )


def _owned_site(session: Session, *, site_id: str, researcher_id: str) -> Site:
    site = get_site(session, site_id=site_id)
    if site.registered_by != researcher_id:
        raise PermissionDeniedError(f"site {site_id!r} was registered by another researcher")
    return site


def _flush(session: Session, conflict_message: str) -> None:
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent request took the name first
        session.rollback()
        raise ConflictError(conflict_message) from exc
