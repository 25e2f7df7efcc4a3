"""The waits built on ``poll_until`` keep their behaviour: what they return, and their messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from deploy.console.researcher_client import ResearcherApiError, ResearcherClient
from site_agent.errors import RoundClosedError
from site_agent.federation.uploads.secagg_upload import SecAggUpload


class Statuses(ResearcherClient):
    """A researcher client whose experiment goes through the given statuses."""

    def __init__(self, statuses: list[str]) -> None:
        super().__init__(httpx.Client(base_url="http://unused"))
        self.statuses = statuses
        self.asked = 0

    def experiment(self, experiment_id: str) -> Any:
        status = self.statuses[min(self.asked, len(self.statuses) - 1)]
        self.asked += 1
        return SimpleNamespace(id=experiment_id, status=status)


def test_wait_finished_returns_the_finished_experiment_and_reports_every_poll() -> None:
    client = Statuses(["running", "running", "completed"])
    seen: list[str] = []
    exp = client.wait_finished(
        "e1", timeout_s=30, poll_s=0.0, on_poll=lambda e: seen.append(e.status)
    )
    assert exp.status == "completed"
    assert seen == ["running", "running", "completed"]


def test_wait_finished_gives_up_naming_the_last_status() -> None:
    client = Statuses(["running", "paused"])
    with pytest.raises(ResearcherApiError, match=r"^experiment e1 still paused after 0 s$"):
        client.wait_finished("e1", timeout_s=0.05, poll_s=0.01)
    assert client.asked >= 2


def _upload(answers: list[int], deadline: datetime | None, now: datetime) -> Any:
    calls: list[str] = []

    def call(method: str, path: str, what: str, **_kw: Any) -> httpx.Response:
        calls.append(f"{method} {path}")
        code = answers[min(len(calls) - 1, len(answers) - 1)]
        return httpx.Response(code, json={"shares": {}})

    upload = SecAggUpload.__new__(SecAggUpload)
    upload.client = SimpleNamespace(_call=call)  # type: ignore[assignment]
    upload.task = SimpleNamespace(deadline=deadline)  # type: ignore[assignment]
    upload.poll_s = 0.0
    upload.first_poll_s = 0.0
    upload.clock = lambda: now
    upload._base = "/tasks/t1/secagg"
    return upload, calls


def test_secagg_step_is_polled_until_it_answers() -> None:
    from data_specs.privacy.secagg_wire import SharesIn

    now = datetime(2026, 11, 30, tzinfo=UTC)
    upload, calls = _upload([204, 204, 200], now + timedelta(minutes=1), now)
    assert upload._wait("/inbox", SharesIn, "share inbox") == SharesIn(shares={})
    assert calls == ["GET /tasks/t1/secagg/inbox"] * 3


def test_secagg_step_gives_up_at_the_tasks_deadline() -> None:
    from data_specs.privacy.secagg_wire import SharesIn

    now = datetime(2026, 11, 30, tzinfo=UTC)
    upload, calls = _upload([204], now, now)
    with pytest.raises(RoundClosedError, match="deadline passed while waiting for the share inbox"):
        upload._wait("/inbox", SharesIn, "share inbox")
    assert len(calls) == 1
