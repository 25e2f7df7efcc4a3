"""A long poll may bring the task's global model in the same answer (``?model=1``): one request
fewer per site and round; the assignment and the bytes are the ones the two requests gave."""

from __future__ import annotations

import hashlib
import json

import pytest

from aggregator.api.deps import Services
from aggregator.storage.db import Task
from data_specs.constants import HEADER_SHA256, HEADER_TASK_BYTES, MEDIA_TASK_AND_MODEL
from data_specs.wire import TaskAssignment
from tests.aggregator.helpers import API, Federation


def _started(fed: Federation, services: Services) -> None:
    exp = fed.create_experiment(rounds=1, min_sites=3)
    fed.start(exp)
    services.orchestrator.step()


@pytest.mark.parametrize(
    "query",
    [
        "wait=0&model=1",  # a site's poll, served by the hot route
        "model=true&wait=0",  # any other spelling: FastAPI's route, the same answer
    ],
)
def test_the_task_and_its_model_come_in_one_answer(
    fed: Federation, services: Services, query: str
) -> None:
    _started(fed, services)
    r = fed.client.get(f"{API}/tasks/next?{query}", headers=fed.sh("site-a"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(MEDIA_TASK_AND_MODEL)
    split = int(r.headers[HEADER_TASK_BYTES])
    task = TaskAssignment.model_validate_json(r.content[:split])
    model = r.content[split:]
    assert hashlib.sha256(model).hexdigest() == task.model_sha256 == r.headers[HEADER_SHA256]
    assert len(model) == task.model_size
    assert model == fed.model("site-a", task.task_id)  # the bytes the download gives
    plain = fed.next_task("site-a")  # the same task, asked for as before
    assert plain is not None and TaskAssignment.model_validate(plain) == task


def test_without_model_or_over_the_limit_the_answer_is_the_assignment_alone(
    fed: Federation, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    _started(fed, services)
    r = fed.client.get(f"{API}/tasks/next?wait=0", headers=fed.sh("site-a"))
    assert r.headers["content-type"] == "application/json"
    monkeypatch.setattr("aggregator.api.routes.tasks.INLINE_MODEL_MAX_BYTES", 10)
    r = fed.client.get(f"{API}/tasks/next?wait=0&model=1", headers=fed.sh("site-a"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert HEADER_TASK_BYTES not in r.headers
    assert json.loads(r.content)["model_sha256"]


def test_the_bytes_sent_with_the_task_are_counted_as_downloaded(
    fed: Federation, services: Services
) -> None:
    _started(fed, services)
    r = fed.client.get(f"{API}/tasks/next?wait=0&model=1", headers=fed.sh("site-a"))
    split = int(r.headers[HEADER_TASK_BYTES])
    task = TaskAssignment.model_validate_json(r.content[:split])
    services.bookkeeping.flush()
    with services.database.session() as session:
        row = session.get(Task, task.task_id)
        assert row is not None and row.delivered_at is not None
        assert row.bytes_down == task.model_size
    sent = services.metrics.site_bytes_down.labels(site="site-a")._value.get()
    assert sent == task.model_size
