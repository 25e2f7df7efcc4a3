"""PostgreSQL: a site's poll and upload checks read on the event loop (``AsyncReads``), and a
connection the server closed is replaced without the site noticing. The first test runs on
SQLite too (``SqliteReads``; its own tests are in ``test_sqlite_reads.py``)."""

from __future__ import annotations

import asyncio
from datetime import UTC

import pytest
from sqlalchemy import text

from aggregator.api.deps import Services
from aggregator.crud import site_requests
from aggregator.storage.db.async_reads import APPLICATION_NAME, AsyncReads
from tests.aggregator.helpers import Federation


def _postgresql_only(services: Services) -> AsyncReads:
    reads = services.async_reads
    if not isinstance(reads, AsyncReads):
        pytest.skip("PostgreSQL only (make test-postgres): SQLite's are SqliteReads")
    return reads


def test_a_read_on_the_loop_gives_what_a_session_gives(fed: Federation, services: Services) -> None:
    """Either database's reads (``AsyncReads`` here, ``SqliteReads`` on SQLite)."""
    reads = services.async_reads
    assert reads is not None  # a SQLite file or PostgreSQL: the tests' databases
    fed.start_first_round(services)
    site_id = fed.sites["site-a"][0]
    with services.database.read_session() as session:
        expected = site_requests.next_task(session, site_id=site_id)
    assert expected is not None

    async def read() -> site_requests.OpenTask:
        row = await reads.one(site_requests.NEXT_TASK, {"site_id": site_id})
        assert row is not None
        return site_requests.OpenTask(**row)

    got = asyncio.run(read())  # another event loop (PostgreSQL: fresh connections)
    assert got == expected
    assert got.deadline_at.tzinfo == UTC  # as UTCDateTime gives it

    async def none() -> object:
        return await reads.one(site_requests.NEXT_TASK, {"site_id": "no-such-site"})

    assert asyncio.run(none()) is None


def test_a_connection_the_server_closed_is_replaced(fed: Federation, services: Services) -> None:
    reads = _postgresql_only(services)
    fed.start_first_round(services)
    assert fed.next_task("site-a") is not None  # the experiment is now known in memory
    assert fed.next_task("site-a") is not None  # read on the loop: a connection is open
    with services.database.engine.connect() as conn:
        killed = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = :name"
            ),
            {"name": APPLICATION_NAME},
        ).scalar_one()
    assert killed >= 1
    before = reads.reconnects
    task = fed.next_task("site-a")  # the site notices nothing
    assert task is not None
    assert reads.reconnects == before + 1
    assert fed.train_and_upload("site-a", task).status_code == 200


def test_a_private_experiments_tasks_are_read_on_a_database_thread(
    fed: Federation, services: Services
) -> None:
    """Its assignment and upload checks read more rows (the round's clipping norm): the
    threaded path, as before; the answers are the same."""
    _postgresql_only(services)
    dp = {"dp": {"clip_norm": 5.0, "noise_multiplier": 0.8, "delta": 1e-5}}
    exp = fed.create_experiment(rounds=1, min_sites=3, privacy=dp)
    fed.start(exp)
    services.orchestrator.step()
    for name in ("site-a", "site-b", "site-c"):
        task = fed.next_task(name)
        assert task is not None and task["clip_norm"] == 5.0
        r = fed.train_and_upload(name, task)
        assert r.status_code == 200 and r.json()["accepted"], r.text
