"""The site's polls of an open secure-aggregation step: 20 ms first, 1.5× back-off, capped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from data_specs import polling
from data_specs.privacy.secagg_wire import AdvertsOut, SecAggTask
from site_agent.errors import RoundClosedError
from site_agent.federation.uploads.secagg_upload import SecAggUpload


class _Client:
    """Answers 204 (step open) ``open_polls`` times, then the step's outcome."""

    def __init__(self, open_polls: int) -> None:
        self.open_polls = open_polls
        self.calls: list[str] = []

    def _call(self, method: str, path: str, what: str, **_: Any) -> httpx.Response:
        self.calls.append(f"{method} {path}")
        if len(self.calls) <= self.open_polls:
            return httpx.Response(204)
        return httpx.Response(200, json={"adverts": []})


def _upload(client: _Client, deadline: datetime | None = None, **kw: float) -> SecAggUpload:
    task = SimpleNamespace(
        task_id="t1",
        deadline=deadline,
        secagg=SecAggTask(index=1, sites=3, threshold=2, context="exp/1/0"),
    )
    return SecAggUpload(client, task, **kw)  # type: ignore[arg-type]


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(polling.time, "sleep", slept.append)
    return slept


def test_polls_back_off_from_20_ms_to_poll_s(pauses: list[float]) -> None:
    client = _Client(open_polls=10)
    out = _upload(client)._wait("/keys", AdvertsOut, "key list")
    assert out == AdvertsOut(adverts=[])
    assert client.calls == ["GET /tasks/t1/secagg/keys"] * 11
    expected = [0.02 * 1.5**i for i in range(8)] + [0.5, 0.5]
    assert pauses == pytest.approx([min(p, 0.5) for p in expected])
    assert pauses[0] == pytest.approx(0.02) and max(pauses) == pytest.approx(0.5)


def test_a_step_already_closed_is_not_waited_for(pauses: list[float]) -> None:
    client = _Client(open_polls=0)
    _upload(client)._wait("/keys", AdvertsOut, "key list")
    assert pauses == [] and len(client.calls) == 1


def test_first_pause_never_exceeds_poll_s(pauses: list[float]) -> None:
    _upload(_Client(open_polls=3), poll_s=0.01)._wait("/keys", AdvertsOut, "key list")
    assert pauses == pytest.approx([0.01, 0.01, 0.01])


def test_deadline_still_ends_the_wait(pauses: list[float]) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    with pytest.raises(RoundClosedError, match="deadline passed while waiting for the key list"):
        _upload(_Client(open_polls=100), deadline=past)._wait("/keys", AdvertsOut, "key list")
    assert pauses == []
