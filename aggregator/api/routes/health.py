"""``/healthz`` and ``/metrics`` (open, no token)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy import text

from aggregator.api.deps import ServicesDep
from aggregator.auth import hash_token, parse_bearer, tokens_match
from aggregator.telemetry import CONTENT_TYPE_LATEST

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz(services: ServicesDep) -> dict[str, str]:
    """Liveness plus a database round trip."""
    with services.database.session() as session:
        session.execute(text("SELECT 1"))
    return {"status": "ok"}


@router.get("/metrics", response_class=Response)
def metrics(request: Request, services: ServicesDep) -> Response:
    """Prometheus text exposition; per-site series (hospital names) only with the admin token."""
    token = parse_bearer(request.headers.get("authorization"))
    admin = services.settings.admin_token
    authorised = (
        token is not None
        and admin is not None
        and tokens_match(hash_token(token), hash_token(admin.get_secret_value()))
    )
    return Response(services.metrics.render(with_sites=authorised), media_type=CONTENT_TYPE_LATEST)
