"""The app factory: ``create_app(settings)`` wires services, routers, error handlers and the round loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI

from aggregator.api.deps import Services
from aggregator.api.errors import install_error_handlers
from aggregator.api.routes import events, experiments, health, researchers, sites, tasks
from aggregator.blobs import BlobStore
from aggregator.db import Database
from aggregator.logs import log_event
from aggregator.orchestrator import Orchestrator
from aggregator.routing_bundle import RoutingBundles
from aggregator.settings import AggregatorSettings
from aggregator.task_board import TaskBoard
from aggregator.telemetry import AggregatorMetrics
from data_specs.constants import API_PREFIX

log = logging.getLogger("aggregator")


def build_services(settings: AggregatorSettings) -> Services:
    """Open the database (creating tables) and the blob store; build the orchestrator."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.resolved_database_url, synchronous=settings.sqlite_synchronous)
    database.create_all()
    blobs = BlobStore(settings.blob_dir)
    removed = blobs.clean_staging()
    if removed:
        log_event(log, "blobs.staging_cleaned", files=removed)
    metrics = AggregatorMetrics()
    orchestrator = Orchestrator(
        database=database, blobs=blobs, metrics=metrics, interval_s=settings.orchestrator_interval_s
    )
    return Services(
        settings=settings,
        database=database,
        blobs=blobs,
        metrics=metrics,
        orchestrator=orchestrator,
        board=TaskBoard(),
        routing=RoutingBundles(blobs),
    )


def create_app(settings: AggregatorSettings) -> FastAPI:
    """Build the aggregator's FastAPI app.

    Args:
        settings: validated settings. Example: ``AggregatorSettings(data_dir=tmp, dev=True)``.

    Returns:
        The app; its lifespan runs the orchestrator loop (unless ``orchestrator_enabled`` is off).
    """
    services = build_services(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        services.board.bind(asyncio.get_running_loop())
        loop_task = None
        if settings.orchestrator_enabled:
            loop_task = asyncio.create_task(
                services.orchestrator.run(services.board), name="orchestrator"
            )
        log_event(log, "aggregator.started", data_dir=str(settings.data_dir), dev=settings.dev)
        try:
            yield
        finally:
            if loop_task is not None:
                loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop_task
            services.database.dispose()
            log_event(log, "aggregator.stopped")

    app = FastAPI(
        title="fedseg aggregator",
        version="1",
        summary="Federated rounds for medical image segmentation: researchers drive, sites pull.",
        lifespan=lifespan,
    )
    app.state.services = services
    install_error_handlers(app)
    app.include_router(health.router)
    api = APIRouter(prefix=API_PREFIX)
    for module in (researchers, sites, experiments, tasks, events):
        api.include_router(module.router)
    app.include_router(api)
    return app
