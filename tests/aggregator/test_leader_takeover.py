"""Two aggregator processes on one PostgreSQL database and one blob folder: the leader is killed
mid-round, the other process takes the lead and finishes the experiment, nothing lost and the
global models byte-identical to a single process's uninterrupted run."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from aggregator.leadership import LEADER_LOCK_KEY
from tests.aggregator.helpers import Federation, sha256
from tests.aggregator.postgres import PostgresServer, database_name
from tests.aggregator.test_kill_restart import copies_of, drive, final_models

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # three server start-ups


def lock_holders(server: PostgresServer, url: str) -> int:
    """How many sessions of this database hold the round leader's advisory lock."""
    database = database_name(url)
    with psycopg.connect(
        host=str(server.socket_dir), user=server.superuser, dbname=database
    ) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND l.granted AND d.datname = %s "
            "AND ((l.classid::bigint << 32) | l.objid::bigint) = %s",
            (database, LEADER_LOCK_KEY),
        ).fetchone()
    assert row is not None
    return int(row[0])


def wait_for(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_leader_killed_mid_round_the_follower_finishes_it(
    tmp_path: Path, spawn: Any, request: pytest.FixtureRequest
) -> None:
    server: PostgresServer = request.getfixturevalue("postgres_server")
    state, [(shared_dir, shared_url), (clean_dir, clean_url)] = copies_of(
        tmp_path / "setup", request, "postgresql", ("shared", "clean")
    )
    assert shared_url is not None and clean_url is not None

    clean = spawn(clean_dir, clean_url)  # one process, uninterrupted: the reference
    assert drive(clean.base, {**state, "uploads": []})
    want = final_models(clean.base, state)
    clean.stop()

    leader = spawn(shared_dir, shared_url)
    wait_for(lambda: lock_holders(server, shared_url) == 1, "the first process never led")
    follower = spawn(shared_dir, shared_url)  # same database, same blob folder
    time.sleep(0.5)  # a few of the follower's tries at the lock
    assert lock_holders(server, shared_url) == 1  # still one leader only

    # The sites talk to the follower only; the leader opens and closes the rounds.
    assert drive(follower.base, state, kill_after_round=2) is False
    leader.stop(signal.SIGKILL)
    wait_for(lambda: lock_holders(server, shared_url) == 1, "the follower never took the lead")

    with httpx.Client(base_url=follower.base, timeout=30) as client:
        fed = Federation(client, state["researcher"], state["sites"])
        round2 = next(r for r in fed.rounds(state["exp"]) if r["number"] == 2)
        accepted = [s["update_sha256"] for s in round2["sites"] if s["status"] == "accepted"]
        assert accepted == [sha256(state["uploads"][-1][3])]  # the accepted update survived
    assert drive(follower.base, state)  # the new leader closes round 2 and runs round 3
    assert final_models(follower.base, state) == want
    follower.stop()
