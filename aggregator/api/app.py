"""The app factory: ``create_app(settings)`` wires services, routers, error handlers and the round loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig

from aggregator.api.announcements import AnnouncementListener
from aggregator.api.deps import Services
from aggregator.api.errors import COMMON_ERRORS, error_responses, install_error_handlers
from aggregator.api.guards import JsonBodyGuard
from aggregator.api.hot_routes import AggregatorAPI
from aggregator.api.principal_cache import PrincipalCache
from aggregator.api.routes import (
    dashboard,
    events,
    experiments,
    fingerprints,
    health,
    invitations,
    researchers,
    secagg,
    sites,
    tasks,
    ui,
)
from aggregator.crud.sqlite_reports import SqliteReports
from aggregator.crud.task_bookkeeping import TaskBookkeeping
from aggregator.leadership import Leadership, lead_rounds
from aggregator.logs import log_event
from aggregator.rate_limits import RateLimiter, UploadSlots
from aggregator.rounds.orchestrator import Orchestrator
from aggregator.rounds.task_board import TaskBoard
from aggregator.settings import AggregatorSettings
from aggregator.storage.blob_cache import BlobCache
from aggregator.storage.blobs import BlobStore
from aggregator.storage.db import Database
from aggregator.storage.db.async_reads import AsyncReads, SiteReads
from aggregator.storage.db.sqlite_reads import SqliteReads
from aggregator.storage.routing_bundle import RoutingBundles
from aggregator.telemetry import AggregatorMetrics
from data_specs.constants import API_PREFIX

# FastAPI's own OpenTelemetry (0.142+) stays off. fedseg has its metrics (``/metrics``) and
# its JSON logs, which never carry a request's body; FastAPI's would export exception messages
# and stack traces, and asks the OpenTelemetry providers on every request (a site's poll and
# upload pay for it a thousand times a round).
TELEMETRY_OFF: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "auto_configure": False,
}

log = logging.getLogger("aggregator")


def build_services(settings: AggregatorSettings) -> Services:
    """Open the database (migrating its schema) and the blob store; build the orchestrator."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.resolved_database_url, synchronous=settings.sqlite_synchronous)
    database.upgrade()
    blobs = BlobStore(settings.blob_dir)
    # Other processes may share the blob folder (PostgreSQL): leave their fresh uploads alone.
    removed = blobs.clean_staging(min_age_s=0.0 if database.is_sqlite else 3600.0)
    if removed:
        log_event(log, "blobs.staging_cleaned", files=removed)
    metrics = AggregatorMetrics()
    # Token answers from memory; a token change committed here empties the cache (watch). On
    # PostgreSQL other processes may change tokens too: the cache is on only while the
    # listener hears their announcements (started with the app, aggregator.api.announcements).
    principal_cache = PrincipalCache(enabled=database.is_sqlite)
    principal_cache.watch(database.session_factory)
    board = TaskBoard()
    orchestrator = Orchestrator(
        database=database, blobs=blobs, metrics=metrics, interval_s=settings.orchestrator_interval_s
    )
    announcements = (
        None
        if database.is_sqlite
        else AnnouncementListener(
            principal_cache,
            database,
            on_tasks=board.wake_all_threadsafe,
            on_rounds=lambda: orchestrator.wake(),  # a no-op where no orchestrator loop runs
        )
    )
    return Services(
        settings=settings,
        database=database,
        blobs=blobs,
        metrics=metrics,
        orchestrator=orchestrator,
        board=board,
        routing=RoutingBundles(blobs),
        auth_failures=RateLimiter(
            per_minute=settings.auth_failures_per_minute, burst=settings.auth_failure_burst
        ),
        upload_rate=RateLimiter(
            per_minute=settings.uploads_per_minute, burst=settings.upload_burst
        ),
        upload_slots=UploadSlots(
            settings.max_concurrent_uploads,
            wait_s=settings.upload_slot_wait_s,
            max_waiting=settings.max_waiting_uploads,
        ),
        model_cache=BlobCache(blobs),
        bookkeeping=TaskBookkeeping(database),
        principals=principal_cache,
        announcements=announcements,
        async_reads=_site_reads(database),
        site_reports=(
            None
            if database.sqlite_path is None
            else SqliteReports(database.sqlite_path, synchronous=database.synchronous)
        ),
    )


def _site_reads(database: Database) -> SiteReads | None:
    """A site's look-ups on the event loop: psycopg's asyncio connections on PostgreSQL, plain
    ``sqlite3`` ones on a SQLite file; None (sessions, as other reads) for an in-memory one."""
    if not database.is_sqlite:
        return AsyncReads(database.engine.url, dialect=database.engine.dialect)
    return None if database.sqlite_path is None else SqliteReads(database.sqlite_path)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run the round loop (unless disabled) on the app's services; close the database at the end."""
    services: Services = app.state.services
    settings = services.settings
    services.board.bind(asyncio.get_running_loop())
    services.metrics.gc_pauses.install()
    if services.announcements is not None:
        services.announcements.start()
    loop_task = None
    if settings.orchestrator_enabled:
        loop_task = asyncio.create_task(
            lead_rounds(
                Leadership(services.database),
                services.board,
                lambda: services.orchestrator.run(services.board),
                interval_s=settings.orchestrator_interval_s,
                tasks_heard=(
                    services.announcements.listening.is_set
                    if services.announcements is not None
                    else lambda: False
                ),
            ),
            name="leadership",
        )
    log_event(log, "aggregator.started", data_dir=str(settings.data_dir), dev=settings.dev)
    try:
        yield
    finally:
        if loop_task is not None:
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
        if services.announcements is not None:
            services.announcements.stop()
        if services.async_reads is not None:
            await services.async_reads.close()
        if services.site_reports is not None:
            services.site_reports.close()
        services.bookkeeping.close()
        services.database.dispose()
        services.metrics.gc_pauses.remove()
        log_event(log, "aggregator.stopped")


def create_app(settings: AggregatorSettings) -> FastAPI:
    """Build the aggregator's FastAPI app.

    Args:
        settings: validated settings. Example: ``AggregatorSettings(data_dir=tmp, dev=True)``.

    Returns:
        The app; its lifespan runs the orchestrator loop (unless ``orchestrator_enabled`` is off)
        on ``app.state.services`` (everything stateful; the routes find them there too).
    """
    app = AggregatorAPI(  # FastAPI; a site's per-round requests skip its stack and router
        title="fedseg aggregator",
        version="1",
        summary="Federated rounds for medical image segmentation: researchers drive, sites pull.",
        lifespan=_lifespan,
        telemetry=TELEMETRY_OFF,
    )
    app.state.services = build_services(settings)
    install_error_handlers(app)
    app.add_middleware(
        JsonBodyGuard,
        max_json_bytes=settings.max_json_bytes,
        body_timeout_s=settings.body_timeout_s,
    )
    app.include_router(health.router)
    common = error_responses(*COMMON_ERRORS)
    # tasks first: every site calls it each round, and a request is matched route by route.
    routers = (tasks, researchers, sites, experiments, secagg, events, invitations, fingerprints)
    for module in (*routers, dashboard):
        # Straight into the app with the API prefix (the same paths and OpenAPI as an
        # ``/api/v1`` router in between): FastAPI then builds each route's request handling
        # when it is first used, not twice over at start-up (0.1 CPU s before healthy).
        app.include_router(module.router, prefix=API_PREFIX, responses=common)
    app.include_router(ui.router)
    return app
