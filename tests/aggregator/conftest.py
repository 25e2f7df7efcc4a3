"""Fixtures: an aggregator app on a real SQLite file in tmp_path, driven in memory by TestClient."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from aggregator.api.app import create_app
from aggregator.api.deps import Services
from aggregator.db.models import utcnow
from aggregator.settings import AggregatorSettings
from tests.aggregator.helpers import ADMIN_TOKEN, Federation


class FakeClock:
    """The orchestrator's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def settings(tmp_path: Path) -> AggregatorSettings:
    return AggregatorSettings(
        data_dir=tmp_path / "agg",
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
