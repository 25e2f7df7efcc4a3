"""Fixtures: an aggregator app on a real SQLite file in tmp_path, driven in memory by TestClient.

``FEDSEG_TEST_DATABASE=postgresql`` (``make test-postgres``) runs the same tests on a fresh
database of a real PostgreSQL server started for the session (see tests/aggregator/postgres.py).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from aggregator.api.app import create_app
from aggregator.api.deps import Services
from aggregator.settings import AggregatorSettings
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


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> AggregatorSettings:
    return AggregatorSettings(
        data_dir=tmp_path / "agg",
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        orchestrator_enabled=False,
        max_upload_bytes=512 * 1024,
        sqlite_synchronous="NORMAL",
    )


@pytest.fixture
def client(settings: AggregatorSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
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
