"""The API routers go straight into the app: the same OpenAPI as with an ``/api/v1`` router in
between, and no route's request handling built at start-up (it is built on first use)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi.routing
import pytest
from fastapi import APIRouter, FastAPI
from pydantic import SecretStr

import aggregator.api.app as app_module
from aggregator.settings import AggregatorSettings


def _settings(tmp_path: Path) -> AggregatorSettings:
    return AggregatorSettings(
        data_dir=tmp_path, admin_token=SecretStr("a" * 40), orchestrator_enabled=False
    )


def _nested_reference(settings: AggregatorSettings) -> FastAPI:
    """The former layout: every API router inside one ``/api/v1`` router."""
    m = app_module
    app = FastAPI(
        title="fedseg aggregator",
        version="1",
        summary="Federated rounds for medical image segmentation: researchers drive, sites pull.",
    )
    app.include_router(m.health.router)
    api = APIRouter(prefix=m.API_PREFIX, responses=m.error_responses(*m.COMMON_ERRORS))
    for module in (
        m.tasks,
        m.researchers,
        m.sites,
        m.experiments,
        m.secagg,
        m.events,
        m.invitations,
        m.fingerprints,
        m.dashboard,
    ):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(m.ui.router)
    return app


@pytest.mark.slow
def test_the_openapi_document_is_the_nested_layouts(tmp_path: Path) -> None:
    app = app_module.create_app(_settings(tmp_path / "a"))
    reference = _nested_reference(_settings(tmp_path / "b"))
    got: dict[str, Any] = app.openapi()
    assert got == reference.openapi()
    assert all(
        path.startswith(("/api/v1/", "/healthz", "/readyz", "/metrics")) for path in got["paths"]
    )


def test_create_app_builds_no_api_routes_request_handling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = getattr(fastapi.routing, "_populate_api_route_state", None)
    if build is None:
        pytest.skip("this FastAPI has no _populate_api_route_state: nothing to count")
    built: list[str] = []

    def counting(route: Any, path: str, *args: Any, **kwargs: Any) -> Any:
        built.append(path)
        return build(route, path, *args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "_populate_api_route_state", counting)
    app_module.create_app(_settings(tmp_path))
    assert [p for p in built if p.startswith("/api/")] == []


def test_fastapis_own_telemetry_stays_off_even_with_opentelemetry_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI (0.142+) would trace every request and export exception messages once an
    OpenTelemetry provider is set up; fedseg keeps its own metrics and logs instead."""
    import fastapi.telemetry._asgi as native

    monkeypatch.setattr(native, "_unconfigured", lambda provider: False)  # providers set up
    assert FastAPI()._native_telemetry.enabled()  # the default would turn on here
    app = app_module.create_app(_settings(tmp_path))
    assert not app._native_telemetry.enabled()
