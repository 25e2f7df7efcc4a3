"""``GET /tasks/next?wait=S``: waits on an event, wakes when a task appears, 204 after at most S seconds."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from aggregator.api.app import create_app
from aggregator.settings import AggregatorSettings
from tests.aggregator.helpers import ADMIN_TOKEN, Federation


@contextlib.contextmanager
def federation(data_dir: Path, max_long_poll_s: float) -> Iterator[Federation]:
    settings = AggregatorSettings(
        data_dir=data_dir,
        admin_token=ADMIN_TOKEN,
        orchestrator_interval_s=30.0,  # far longer than the test: only a wake-up can be fast
        max_long_poll_s=max_long_poll_s,
        sqlite_synchronous="NORMAL",
    )
    with TestClient(create_app(settings)) as client:
        yield Federation.create(client, ["site-a", "site-b"])


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Federation]:
    with federation(tmp_path, max_long_poll_s=3.0) as fed:
        yield fed


def test_empty_poll_answers_204_after_wait(live: Federation) -> None:
    started = time.monotonic()
    assert live.next_task("site-a", wait=0.4) is None
    assert 0.35 <= time.monotonic() - started < 2.5


def test_wait_is_capped_by_settings(tmp_path: Path) -> None:
    with federation(tmp_path, max_long_poll_s=1.0) as live:
        started = time.monotonic()
        assert live.next_task("site-a", wait=600) is None
        assert 0.95 <= time.monotonic() - started < 3.0


def test_poll_is_woken_when_a_round_opens(live: Federation) -> None:
    exp = live.create_experiment(rounds=1)
    got: dict[str, Any] = {}

    def poll() -> None:
        started = time.monotonic()
        got["task"] = live.next_task("site-b", wait=3)
        got["seconds"] = time.monotonic() - started

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.3)
    live.start(exp)  # wakes the orchestrator, which opens round 1 and wakes the poller
    poller.join(timeout=10)
    assert got["task"] is not None and got["task"]["experiment_id"] == exp
    assert got["seconds"] < 2.5
