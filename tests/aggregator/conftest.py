"""Fixtures: an aggregator app on a real SQLite file in tmp_path, driven in memory by TestClient.

Each test gets fresh services (database, blob store, orchestrator, task board, limiters: all the
state there is) on its own data dir. Two things are made once per test process instead, because
they cost most of a test's set-up and hold no state: the migrated database, which each test gets
a byte copy of (the app's start-up still runs the migrations, finding the head already there),
and the FastAPI app's route table, which ``client`` reuses with the test's services in
``app.state.services`` (routes and the lifespan read nothing else).

``FEDSEG_TEST_DATABASE=postgresql`` (``make test-postgres``) runs the same tests on a fresh
database of a real PostgreSQL server started for the session (see tests/aggregator/postgres.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from aggregator.api.app import build_services, create_app
from aggregator.api.deps import Services
from aggregator.settings import AggregatorSettings, default_database_url
from aggregator.storage.db import Database
from aggregator.storage.db.models import utcnow
from tests.aggregator.helpers import ADMIN_TOKEN, Federation
from tests.aggregator.postgres import PostgresServer, PostgresUnavailable
from tests.aggregator.server_process import ServerProcess

ON_POSTGRES = os.environ.get("FEDSEG_TEST_DATABASE", "sqlite") == "postgresql"


class FakeClock:
    """The orchestrator's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL for the session; the tests that need it skip loudly if it cannot start."""
    server = PostgresServer()
    try:
        server.start()
    except PostgresUnavailable as exc:
        server.stop()
        print(f"\nPOSTGRESQL TIER SKIPPED: {exc}", file=sys.stderr)
        pytest.skip(f"PostgreSQL could not start: {exc}")
    yield server
    server.stop()


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None (SQLite in the data dir), or a fresh PostgreSQL database under ``make test-postgres``."""
    if not ON_POSTGRES:
        return None
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.database_url()


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database file at the migrations' head, made once per test process."""
    path = tmp_path_factory.mktemp("migrated") / "template.db"
    database = Database(f"sqlite:///{path}", synchronous="NORMAL")
    database.upgrade()
    with database.engine.connect() as conn:  # everything into the main file: a copy is whole
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    database.dispose()
    return path


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None, migrated_sqlite: Path) -> AggregatorSettings:
    settings = AggregatorSettings(
        data_dir=tmp_path / "agg",
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        orchestrator_enabled=False,
        max_upload_bytes=512 * 1024,
        sqlite_synchronous="NORMAL",
    )
    if database_url is None:
        settings.data_dir.mkdir(parents=True)
        target = default_database_url(settings.data_dir).removeprefix("sqlite:///")
        shutil.copyfile(migrated_sqlite, target)
    return settings


@pytest.fixture(scope="session")
def _apps() -> dict[tuple[int, float], FastAPI]:
    return {}


@pytest.fixture
def client(
    settings: AggregatorSettings, _apps: dict[tuple[int, float], FastAPI]
) -> Iterator[TestClient]:
    """``create_app(settings)``, its route table shared with the tests of equal middleware options."""
    key = (settings.max_json_bytes, settings.body_timeout_s)  # what create_app wires outside
    if key not in _apps:
        _apps[key] = app = create_app(settings)
    else:
        app = _apps[key]
        app.state.services = build_services(settings)
    with TestClient(app) as test_client:
        listener = app.state.services.announcements
        if listener is not None:  # PostgreSQL: tokens are cached once changes can be heard
            assert listener.listening.wait(10), "the announcement listener did not start"
        yield test_client


@pytest.fixture
def services(client: TestClient) -> Services:
    return client.app.state.services  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def clock(services: Services) -> FakeClock:
    fake = FakeClock()
    services.orchestrator.clock = fake
    return fake


@pytest.fixture
def fed(client: TestClient) -> Federation:
    return Federation.create(client, ["site-a", "site-b", "site-c"])


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    """Start aggregator processes; any still running when the test ends are killed."""
    token_file = tmp_path / "admin_token"
    token_file.write_text(ADMIN_TOKEN)
    started: list[ServerProcess] = []

    def _spawn(data_dir: Path, database_url: str | None = None) -> ServerProcess:
        server = ServerProcess(data_dir, token_file, tmp_path / "server.log", database_url)
        started.append(server)
        return server

    yield _spawn
    for server in started:
        if server.proc.poll() is None:
            server.stop(signal.SIGKILL)
