"""FastAPI dependencies: services, settings, the DB session and the current principal (``Annotated``).

FastAPI runs every plain ``def`` dependency in its thread pool, one hand-over to a worker thread
and back per dependency (a sync generator such as ``get_session`` costs two). A site's request
used to make eight of them before the route ran; at a thousand sites those hand-overs were the
aggregator's largest CPU cost. So every dependency here that does not block is ``async def``
(it runs on the event loop), and the principal lookups do their database work in one worker
call with their own session. A token answered once is then answered from memory
(``aggregator.api.principal_cache``: revocation and rotation empty it at once) without any
hand-over, until the site's ``last_seen_at`` is due again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy.orm import Session

from aggregator.api import db_threads
from aggregator.api.announcements import AnnouncementListener
from aggregator.api.client_certs import require_site_certificate
from aggregator.api.principal_cache import CachedPrincipal, PrincipalCache
from aggregator.auth import hash_token, tokens_match
from aggregator.crud import principals
from aggregator.crud.sqlite_reports import SqliteReports
from aggregator.crud.task_bookkeeping import TaskBookkeeping
from aggregator.errors import AuthenticationError, PermissionDeniedError, require_row
from aggregator.rate_limits import RateLimiter, UploadSlots
from aggregator.rounds.orchestrator import Orchestrator
from aggregator.rounds.task_board import TaskBoard
from aggregator.settings import AggregatorSettings
from aggregator.storage.blob_cache import BlobCache
from aggregator.storage.blobs import BlobStore
from aggregator.storage.db import Database
from aggregator.storage.db.async_reads import SiteReads
from aggregator.storage.routing_bundle import RoutingBundles
from aggregator.telemetry import AggregatorMetrics


@dataclass
class Services:
    """Everything the routes use, built once per app by ``create_app``."""

    settings: AggregatorSettings
    database: Database
    blobs: BlobStore
    metrics: AggregatorMetrics
    orchestrator: Orchestrator
    board: TaskBoard
    routing: RoutingBundles
    auth_failures: RateLimiter
    upload_rate: RateLimiter
    upload_slots: UploadSlots
    model_cache: BlobCache
    bookkeeping: TaskBookkeeping
    principals: PrincipalCache = field(default_factory=PrincipalCache)
    announcements: AnnouncementListener | None = None  # PostgreSQL: other processes' changes
    async_reads: SiteReads | None = None  # a site's look-ups on the event loop (sqlite_reads)
    site_reports: SqliteReports | None = None  # a SQLite file: upload reports (sqlite_reports)


@dataclass(frozen=True)
class ResearcherPrincipal:
    """The researcher making the request."""

    id: str
    name: str

    @property
    def actor(self) -> str:
        return f"researcher:{self.id}"


@dataclass(frozen=True)
class SitePrincipal:
    """The site making the request."""

    id: str
    name: str

    @property
    def actor(self) -> str:
        return f"site:{self.id}"


async def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_settings(services: ServicesDep) -> AggregatorSettings:
    return services.settings


def get_session(services: ServicesDep) -> Iterator[Session]:
    if services.bookkeeping.pending:  # what this process served, visible to what it reports
        services.bookkeeping.flush()
    with services.database.session() as session:
        yield session


SettingsDep = Annotated[AggregatorSettings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, description="researcher, site or admin token")


BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def bearer_token(credentials: BearerDep) -> str:
    """The bearer token of the request.

    Raises:
        AuthenticationError: no ``Authorization: Bearer`` header.
    """
    return _token_of(credentials)


def _token_of(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials:
        raise AuthenticationError("missing bearer token: send 'Authorization: Bearer <token>'")
    return credentials.credentials


TokenDep = Annotated[str, Depends(bearer_token)]


def bearer_token_of(request: Request) -> str:
    """The request's bearer token as ``bearer_token`` reads it, without FastAPI's
    ``HTTPBearer`` and the credentials model it builds (a site's every request).

    Raises:
        AuthenticationError: no ``Authorization: Bearer`` header.
    """
    authorization = request.headers.get("authorization")
    scheme, token = get_authorization_scheme_param(authorization)
    if not token or scheme.lower() != "bearer":
        raise AuthenticationError("missing bearer token: send 'Authorization: Bearer <token>'")
    return token


def client_address(request: Request) -> str:
    """The peer's address (the key of per-address limits)."""
    return request.client.host if request.client else "unknown"


async def guard_auth(request: Request, services: ServicesDep, token: TokenDep) -> None:
    """Refuse (429) an address or token that failed authentication too often lately."""
    _guard(request, services, token)


def _guard(request: Request, services: Services, token: str, token_hash: str = "") -> None:
    keys = (f"ip:{client_address(request)}", f"token:{token_hash or hash_token(token)}")
    services.auth_failures.check(*keys, what="failed authentications")
    request.state.auth_keys = keys


def record_auth_failure(request: Request, services: Services) -> None:
    """Count one failed authentication against the request's address and token."""
    for key in getattr(request.state, "auth_keys", ()):
        services.auth_failures.hit(key)


AuthGuard = Annotated[None, Depends(guard_auth)]


async def current_admin(
    request: Request, services: ServicesDep, settings: SettingsDep, token: TokenDep, _: AuthGuard
) -> None:
    """Require the admin token."""
    if settings.admin_token is None:
        raise AuthenticationError("admin routes are disabled: the server has no admin token")
    if not tokens_match(hash_token(token), hash_token(settings.admin_token.get_secret_value())):
        record_auth_failure(request, services)
        raise AuthenticationError("invalid admin token")


async def current_researcher(
    request: Request, services: ServicesDep, settings: SettingsDep, token: TokenDep, _: AuthGuard
) -> ResearcherPrincipal:
    """Require a researcher token (not revoked, not expired)."""
    cached = _cached(services.principals, hash_token(token), "researcher", settings)
    if cached is not None:
        return ResearcherPrincipal(cached.id, cached.name)
    return await run_in_threadpool(_researcher_of, request, services, settings, token)


def _cached(
    cache: PrincipalCache, token_hash: str, kind: str, settings: AggregatorSettings
) -> CachedPrincipal | None:
    """The cached owner of a token (by its hash), unless absent, stale or expired (then the
    database decides)."""
    cached = cache.get(token_hash, kind)
    if cached is None or principals.token_expired(cached.issued_at, settings.token_ttl_days):
        return None
    return cached


def _researcher_of(
    request: Request, services: Services, settings: AggregatorSettings, token: str
) -> ResearcherPrincipal:
    generation = services.principals.generation  # before the read: see PrincipalCache.put
    with services.database.session() as session:
        principal, issued_at = _researcher_in(session, request, services, settings, token)
    services.principals.put(
        hash_token(token),
        CachedPrincipal(
            "researcher",
            principal.id,
            principal.name,
            issued_at,
            time.monotonic() + services.principals.refresh_s,
        ),
        generation=generation,
    )
    return principal


def _researcher_in(
    session: Session, request: Request, services: Services, settings: AggregatorSettings, token: str
) -> tuple[ResearcherPrincipal, datetime | None]:
    researcher = principals.researcher_by_token(session, token=token)
    if (
        researcher is None
        or not tokens_match(researcher.token_hash, hash_token(token))
        or principals.token_expired(
            researcher.token_issued_at or researcher.created_at, settings.token_ttl_days
        )
    ):
        record_auth_failure(request, services)
        _refuse(session, settings, token, wanted="researcher")
    researcher = require_row(researcher, "researcher")
    principal = ResearcherPrincipal(researcher.id, researcher.name)
    issued_at = researcher.token_issued_at or researcher.created_at
    session.commit()
    return principal, issued_at


async def current_site(
    request: Request, services: ServicesDep, credentials: BearerDep
) -> SitePrincipal:
    """Require an enrolled site's token (not expired); records when the site was last seen.

    A site calls every round: this dependency does the work of ``bearer_token``,
    ``get_settings`` and ``guard_auth`` itself rather than through three more dependencies
    (FastAPI's dependency solving was a tenth of the aggregator's CPU per request).
    """
    return await site_of_token(request, services, _token_of(credentials))


async def site_of_token(request: Request, services: Services, token: str) -> SitePrincipal:
    """``current_site`` for a token already read (``bearer_token_of``: the hot routes)."""
    token_hash = hash_token(token)
    _guard(request, services, token, token_hash)
    settings = services.settings
    cached = _cached(services.principals, token_hash, "site", settings)
    if cached is None:
        principal = await db_threads.run(_site_of, request, services, settings, token)
    else:
        try:
            require_site_certificate(request, settings, site_name=cached.name)
        except (AuthenticationError, PermissionDeniedError):
            record_auth_failure(request, services)
            raise
        principal = SitePrincipal(cached.id, cached.name)
    services.bookkeeping.seen(principal.id)  # last_seen_at, written with others every 30 s
    return principal


def _site_of(
    request: Request, services: Services, settings: AggregatorSettings, token: str
) -> SitePrincipal:
    generation = services.principals.generation  # before the read: see PrincipalCache.put
    with services.database.read_session() as session:  # reads only: no transaction on PostgreSQL
        principal, issued_at = _site_in(session, request, services, settings, token)
    services.principals.put(
        hash_token(token),
        CachedPrincipal(
            "site",
            principal.id,
            principal.name,
            issued_at,
            time.monotonic() + services.principals.refresh_s,
        ),
        generation=generation,
    )
    return principal


def _site_in(
    session: Session, request: Request, services: Services, settings: AggregatorSettings, token: str
) -> tuple[SitePrincipal, datetime | None]:
    site = principals.site_by_token(session, token=token)
    if (
        site is None
        or site.token_hash is None
        or not tokens_match(site.token_hash, hash_token(token))
        or principals.token_expired(
            site.token_issued_at or site.enrolled_at, settings.token_ttl_days
        )
    ):
        record_auth_failure(request, services)
        _refuse(session, settings, token, wanted="site")
    site = require_row(site, "site")
    try:
        require_site_certificate(request, settings, site_name=site.name)
    except (AuthenticationError, PermissionDeniedError):
        record_auth_failure(request, services)
        session.commit()
        raise
    return SitePrincipal(site.id, site.name), site.token_issued_at or site.enrolled_at


def _refuse(session: Session, settings: AggregatorSettings, token: str, *, wanted: str) -> None:
    """Say which kind of token was given when it is the wrong kind, else that it is invalid."""
    given = None
    admin = settings.admin_token.get_secret_value() if settings.admin_token else None
    if admin is not None and tokens_match(hash_token(token), hash_token(admin)):
        given = "the admin token"
    elif wanted != "site" and principals.site_by_token(session, token=token) is not None:
        given = "a site token"
    elif (
        wanted != "researcher" and principals.researcher_by_token(session, token=token) is not None
    ):
        given = "a researcher token"
    session.commit()
    if given is not None:
        raise PermissionDeniedError(f"this route needs a {wanted} token; {given} was given")
    raise AuthenticationError(f"invalid or revoked {wanted} token")


CurrentAdmin = Annotated[None, Depends(current_admin)]
CurrentResearcher = Annotated[ResearcherPrincipal, Depends(current_researcher)]
CurrentSite = Annotated[SitePrincipal, Depends(current_site)]


async def get_blobs(services: ServicesDep) -> BlobStore:
    return services.blobs


async def get_metrics(services: ServicesDep) -> AggregatorMetrics:
    return services.metrics


BlobsDep = Annotated[BlobStore, Depends(get_blobs)]
MetricsDep = Annotated[AggregatorMetrics, Depends(get_metrics)]
