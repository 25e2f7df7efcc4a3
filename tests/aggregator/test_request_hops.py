"""A site's requests hand work to FastAPI's thread pool only where the work blocks.

Each plain ``def`` dependency costs one hand-over to a worker thread and back (a generator
dependency two). At a thousand sites those hand-overs were the aggregator's largest CPU cost
(issue 20's profile); the routes a site calls every round now make one for its token lookup and
one for their own database work that writes (reads stay on the event loop).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio.to_thread
import pytest

from aggregator.api import db_threads
from aggregator.api.deps import Services
from tests.aggregator.helpers import API, Federation, update_bundle

FILE_IO = {"stat", "open", "BufferedReader.read", "BufferedReader.close"}


@contextmanager
def counting_hand_overs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Names of the functions sent to a worker thread while the block runs."""
    calls: list[str] = []
    real = anyio.to_thread.run_sync

    async def counted(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        inner = getattr(func, "func", func)  # functools.partial
        calls.append(getattr(inner, "__qualname__", repr(inner)))
        return await real(func, *args, **kwargs)

    real_db = db_threads.run

    async def counted_db(func: Callable[..., Any], *args: Any) -> Any:
        calls.append(getattr(func, "__qualname__", repr(func)))
        return await real_db(func, *args)

    with monkeypatch.context() as patch:
        patch.setattr(anyio.to_thread, "run_sync", counted)
        patch.setattr(db_threads, "run", counted_db)  # a site's database calls (own pool)
        yield calls


def test_a_round_of_one_site_makes_one_hand_over_per_blocking_step(
    fed: Federation, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = fed.create_experiment(rounds=1, min_sites=3)
    fed.start(exp)
    with counting_hand_overs(monkeypatch) as idle:
        assert fed.next_task("site-a") is None  # before the round opens: token lookup + look
    services.orchestrator.step()
    with counting_hand_overs(monkeypatch) as polled:
        task = fed.next_task("site-a")
    assert task is not None
    with counting_hand_overs(monkeypatch) as fetched:
        r = fed.client.get(f"{API}/tasks/{task['task_id']}/model", headers=fed.sh("site-a"))
        assert r.status_code == 200
    body = update_bundle(
        r.content, site="site-a", round_number=1, num_samples=10, spec_hash=task["spec_hash"]
    )
    with counting_hand_overs(monkeypatch) as uploaded:
        assert fed.upload("site-a", task["task_id"], body, 10).status_code == 200

    # The first request looks the token up; later ones find it in memory (the principal
    # cache; on PostgreSQL while token changes are heard, test_announcements). The read-only
    # steps run on the event loop: on SQLite, where a reader never waits, as plain calls
    # (``db_threads.read``); on PostgreSQL the poll and the upload's checks through psycopg's
    # asyncio connections (``AsyncReads``), the model's row (a request the agent no longer
    # makes) as a hand-over.
    assert services.principals.enabled
    lookup: list[str] = []

    def read(name: str) -> list[str]:
        return [] if services.database.is_sqlite else [name]

    assert idle == ["_site_of"], idle
    # (PostgreSQL: the experiment's first task in this process reads the experiment itself,
    # on a database thread; it is remembered from then on, as the upload below shows.)
    assert polled == [*lookup, *read("_deliver")], polled
    # The rest is Starlette's FileResponse reading the file (a model not held in memory).
    assert [c for c in fetched if c not in FILE_IO] == [*lookup, *read("task_model.<locals>.find")]
    # The checks after the body, which write and fsync (the body's writes go to the upload's
    # own writer thread).
    assert uploaded == [*lookup, "upload_update.<locals>.accept"]


def test_a_full_house_refuses_an_upload_before_any_database_work(
    fed: Federation, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = fed.create_experiment(rounds=1, min_sites=3)
    fed.start(exp)
    services.orchestrator.step()
    task = fed.next_task("site-a")
    assert task is not None
    model = fed.model("site-a", task["task_id"])
    body = update_bundle(
        model, site="site-a", round_number=1, num_samples=10, spec_hash=task["spec_hash"]
    )
    services.upload_slots.active = services.upload_slots.limit  # every slot taken...
    services.upload_slots.max_waiting = 0  # ...and no room to wait for one
    with counting_hand_overs(monkeypatch) as refused:
        r = fed.upload("site-a", task["task_id"], body, 10)
    assert r.status_code == 429 and "already in progress" in r.json()["detail"]
    assert refused == ([] if services.principals.enabled else ["_site_of"])  # no database work
    services.upload_slots.active = 0
    assert fed.upload("site-a", task["task_id"], body, 10).status_code == 200
