"""``/healthz`` and ``/metrics`` (open, no token)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy import text

from aggregator.api.deps import ServicesDep
from aggregator.telemetry import CONTENT_TYPE_LATEST

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz(services: ServicesDep) -> dict[str, str]:
    """Liveness plus a database round trip."""
    with services.database.session() as session:
        session.execute(text("SELECT 1"))
    return {"status": "ok"}


@router.get("/metrics", response_class=Response)
def metrics(services: ServicesDep) -> Response:
    """Prometheus text exposition."""
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
