"""Relaxed commits: bookkeeping skips the fsync, everything else keeps synchronous=FULL."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select, text

from aggregator.api.deps import Services
from aggregator.storage.db import Database
from aggregator.storage.db.models import Researcher
from aggregator.storage.db.relaxed import relax_next_commit
from tests.aggregator.helpers import Federation

FULL, NORMAL = 2, 1  # PRAGMA synchronous answers


def _level(session: Any) -> int:
    return int(session.execute(text("PRAGMA synchronous")).scalar_one())


def test_a_relaxed_commit_is_normal_then_the_pool_gets_full_back(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'a.db'}", synchronous="FULL")
    db.create_all()
    with db.session() as session:
        session.execute(select(Researcher)).all()  # a read does not start a write transaction
        assert relax_next_commit(session) is True
        assert _level(session) == NORMAL
        session.add(Researcher(name="r1", token_hash="h1"))
        session.commit()
    for _ in range(3):  # whichever pooled connection comes next, it is FULL again
        with db.session() as session:
            assert _level(session) == FULL
            assert session.scalars(select(Researcher.name)).all() == ["r1"]
    db.dispose()


def test_a_session_that_already_wrote_keeps_its_full_commit(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'b.db'}", synchronous="FULL")
    db.create_all()
    with db.session() as session:
        session.add(Researcher(name="r2", token_hash="h2"))
        session.flush()  # the write transaction has begun
        assert relax_next_commit(session) is False
        assert _level(session) == FULL
        session.commit()
    db.dispose()


def _upload_all(fed: Federation, sites: list[str]) -> None:
    from tests.aggregator.helpers import API, update_bundle

    for site in sites:
        task = fed.next_task(site)
        assert task is not None
        r = fed.client.get(f"{API}/tasks/{task['task_id']}/model", headers=fed.sh(site))
        body = update_bundle(
            r.content,
            site=site,
            round_number=int(task["round"]),
            num_samples=10,
            spec_hash=str(task["spec_hash"]),
        )
        assert fed.upload(site, str(task["task_id"]), body, 10).status_code == 200


@pytest.mark.skipif(
    os.environ.get("FEDSEG_TEST_DATABASE") == "postgresql",
    reason="relaxed commits are a SQLite pragma",
)
@pytest.mark.parametrize(("min_sites", "relaxed"), [(3, True), (4, False)])
def test_the_claim_of_a_round_that_will_aggregate_commits_relaxed(
    client: TestClient, fed: Federation, services: Services, min_sites: int, relaxed: bool
) -> None:
    """Its loss in a power cut only leaves the round open for the next step to claim again;
    a round that will not aggregate (a retry or a failure follows) keeps its full commit."""
    if min_sites > 3:
        fed.add_site("site-d")
    exp = fed.create_experiment(rounds=2, min_sites=min_sites)
    fed.start(exp)
    services.orchestrator.step()
    _upload_all(fed, ["site-a", "site-b", "site-c"])
    if min_sites > 3:  # site-d gives up: every site reported, too few accepted
        task = fed.next_task("site-d")
        assert task is not None
        failed = fed.client.post(
            f"/api/v1/tasks/{task['task_id']}/failure",
            json={"reason": "training_failed"},
            headers=fed.sh("site-d"),
        )
        assert failed.status_code in (200, 204), failed.text
    pragmas: list[str] = []
    stepping = threading.get_ident()  # the background bookkeeping writer has its own thread

    @event.listens_for(services.database.engine, "before_cursor_execute")
    def _spy(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("PRAGMA synchronous=") and threading.get_ident() == stepping:
            pragmas.append(statement)

    services.orchestrator.step()
    event.remove(services.database.engine, "before_cursor_execute", _spy)
    assert pragmas == (["PRAGMA synchronous=NORMAL"] if relaxed else [])
    first = fed.rounds(exp)[0]
    assert first["status"] == ("closed" if relaxed else first["status"])
    if relaxed:
        assert fed.rounds(exp)[1]["status"] == "open"  # closed and the next opened, FULL
    else:
        assert first["status"] != "open"  # decided (retried or failed) with a full commit
