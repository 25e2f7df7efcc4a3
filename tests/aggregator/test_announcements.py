"""Two aggregator apps on one PostgreSQL database, as two processes would be: a token revoked
through one is refused by the other at once, although both answer tokens from memory (off
whenever the announcements cannot be heard); a round opened through one reaches the other's
waiting sites at once. And pooled connections are pinged only after being idle."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from aggregator.api.app import create_app
from aggregator.api.deps import Services
from aggregator.api.principal_cache import CachedPrincipal, PrincipalCache
from aggregator.crud.announcements import ROUNDS_CHANNEL, TASKS_CHANNEL, TOKENS_CHANNEL
from aggregator.settings import AggregatorSettings
from aggregator.storage.db import Database
from aggregator.storage.db import idle_ping as idle_ping_module
from tests.aggregator.helpers import ADMIN_TOKEN, API, Federation
from tests.aggregator.postgres import PostgresServer, database_name

pytestmark = pytest.mark.slow  # two apps on a real PostgreSQL server each


def wait_for(check: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _settings(data_dir: Path, url: str) -> AggregatorSettings:
    return AggregatorSettings(
        data_dir=data_dir, database_url=url, admin_token=ADMIN_TOKEN, orchestrator_enabled=False
    )


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    return postgres_server.database_url()


@contextmanager
def _listening_apps(url: str, *data_dirs: Path) -> Iterator[tuple[TestClient, TestClient]]:
    """Two aggregator apps (as two processes would be) on one PostgreSQL database, each with
    the data folder given (the same one twice: a shared blob folder), both listening."""
    first, second = data_dirs
    with (
        TestClient(create_app(_settings(first, url))) as a,
        TestClient(create_app(_settings(second, url))) as b,
    ):
        for client in (a, b):
            listener = _services(client).announcements
            assert listener is not None
            wait_for(listener.listening.is_set, "the listener never started listening")
        yield a, b


@pytest.fixture
def two_apps(tmp_path: Path, pg_url: str) -> Iterator[tuple[TestClient, TestClient]]:
    """Two aggregator apps sharing one PostgreSQL database, each with its own data folder."""
    with _listening_apps(pg_url, tmp_path / "a", tmp_path / "b") as apps:
        yield apps


def _services(client: TestClient) -> Services:
    return client.app.state.services  # type: ignore[attr-defined,no-any-return]


def _settled(heard: dict[str, int], channel: str, quiet_s: float = 0.5) -> int:
    """How many announcements on ``channel`` were heard once none came for ``quiet_s``: those
    of the set-up may still be on their way to a listener on a busy machine."""
    while True:
        before = heard[channel]
        time.sleep(quiet_s)
        if heard[channel] == before:
            return before


def _poll(client: TestClient, fed: Federation, name: str) -> int:
    return client.get(f"{API}/tasks/next", headers=fed.sh(name)).status_code


@pytest.mark.parametrize("action", ["revoke", "rotate"])
def test_a_token_revoked_through_one_process_is_refused_by_the_other_at_once(
    two_apps: tuple[TestClient, TestClient], action: str
) -> None:
    a, b = two_apps
    fed = Federation.create(a, ["site-a", "site-b"])
    cache_b = _services(b).principals
    assert _poll(b, fed, "site-a") == 204  # looked up in the database, then remembered
    hits = cache_b.hits
    assert _poll(b, fed, "site-a") == 204
    assert cache_b.hits == hits + 1, "b did not answer the token from memory"

    listener_b = _services(b).announcements
    assert listener_b is not None
    heard = _settled(listener_b.heard, TOKENS_CHANNEL)  # the sites' tokens were announced too
    site_id = fed.sites["site-a"][0]
    r = a.post(f"{API}/sites/{site_id}/{action}", headers=fed.rh)
    assert r.status_code == 200, r.text
    wait_for(lambda: listener_b.heard[TOKENS_CHANNEL] > heard, "b never heard of the change")
    assert _poll(b, fed, "site-a") == 401
    assert _poll(b, fed, "site-b") == 204  # the others keep working


def test_a_rolled_back_change_is_not_announced(
    two_apps: tuple[TestClient, TestClient],
) -> None:
    a, b = two_apps
    fed = Federation.create(a, ["site-a"])
    listener_b = _services(b).announcements
    assert listener_b is not None
    heard = _settled(listener_b.heard, TOKENS_CHANNEL)  # the sites' tokens were announced too
    from aggregator.crud.principals import mark_changed

    with _services(a).database.session() as session:
        mark_changed(session)
        session.rollback()
    with _services(a).database.session() as session:
        mark_changed(session)
        session.commit()
    wait_for(lambda: listener_b.heard[TOKENS_CHANNEL] > heard, "the committed change was not heard")
    time.sleep(0.2)
    assert listener_b.heard[TOKENS_CHANNEL] == heard + 1  # the rolled-back one never came
    assert _poll(b, fed, "site-a") == 204


def test_a_round_opened_through_one_process_reaches_the_others_waiting_sites_at_once(
    two_apps: tuple[TestClient, TestClient],
) -> None:
    a, b = two_apps
    fed = Federation.create(a, ["site-a", "site-b"])
    exp = fed.create_experiment(rounds=1, min_sites=2)
    fed.start(exp)
    answer: dict[str, Any] = {}

    def wait_on_b() -> None:  # a long poll of 10 s to the other process
        started = time.monotonic()
        r = b.get(f"{API}/tasks/next", params={"wait": 10}, headers=fed.sh("site-a"))
        answer.update(status=r.status_code, seconds=time.monotonic() - started)

    poller = threading.Thread(target=wait_on_b)
    poller.start()
    site_a = fed.sites["site-a"][0]
    wait_for(lambda: site_a in _services(b).board.waiting_sites(), "b's site never waited")
    listener_b = _services(b).announcements
    assert listener_b is not None
    heard = listener_b.heard[TASKS_CHANNEL]
    _services(a).orchestrator.step()  # a opens round 1 (b runs no rounds: no tick wakes it)
    poller.join(timeout=15)
    assert answer.get("status") == 200, answer
    assert answer["seconds"] < 5, answer  # woken by the announcement, not the poll's end
    assert listener_b.heard[TASKS_CHANNEL] > heard


@pytest.fixture
def two_apps_one_folder(tmp_path: Path, pg_url: str) -> Iterator[tuple[TestClient, TestClient]]:
    """Two aggregator apps on one PostgreSQL database and one shared data folder (its blobs)."""
    with _listening_apps(pg_url, tmp_path / "shared", tmp_path / "shared") as apps:
        yield apps


def test_a_rounds_last_report_through_another_process_wakes_the_leader_at_once(
    two_apps_one_folder: tuple[TestClient, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """a runs the rounds; b takes every report. Only the round's last report is announced, and
    a's orchestrator steps on hearing it, not at its next tick: the round closes at once."""
    a, b = two_apps_one_folder
    fed = Federation.create(a, ["site-a", "site-b", "site-c"])
    exp = fed.create_experiment(rounds=1, min_sites=2)
    fed.start(exp)
    leader = _services(a).orchestrator
    leader.step()  # a opens round 1
    woken: list[float] = []
    monkeypatch.setattr(leader, "wake", lambda: woken.append(time.monotonic()))
    listener_a = _services(a).announcements
    assert listener_a is not None
    fed.client = b  # the sites talk to the other process from here
    tasks = {name: fed.next_task(name) for name in ("site-a", "site-b", "site-c")}
    assert all(tasks.values())
    assert fed.train_and_upload("site-a", tasks["site-a"]).status_code == 200  # type: ignore[arg-type]
    failed = b.post(
        f"{API}/tasks/{tasks['site-b']['task_id']}/failure",  # type: ignore[index]
        json={"reason": "disk full"},
        headers=fed.sh("site-b"),
    )
    assert failed.status_code == 200, failed.text
    time.sleep(0.5)  # whatever these two would announce has arrived by now
    assert listener_a.heard[ROUNDS_CHANNEL] == 0 and woken == []
    assert fed.train_and_upload("site-c", tasks["site-c"]).status_code == 200  # type: ignore[arg-type]
    wait_for(lambda: woken, "the leader never heard of the round's last report", timeout=5)
    assert listener_a.heard[ROUNDS_CHANNEL] == 1
    leader.step()  # what the woken loop would do now
    rounds = a.get(f"{API}/experiments/{exp}/rounds", headers=fed.rh).json()
    assert [r["status"] for r in rounds] == ["closed"], rounds


def test_the_cache_is_off_while_the_listener_cannot_hear(
    two_apps: tuple[TestClient, TestClient], postgres_server: PostgresServer, pg_url: str
) -> None:
    _, b = two_apps
    services = _services(b)
    listener = services.announcements
    assert listener is not None and services.principals.enabled
    entry = CachedPrincipal("site", "s1", "site-x", None, time.monotonic() + 30)
    services.principals.put("h", entry, generation=services.principals.generation)
    assert services.principals.get("h", "site") == entry

    # The listening connection is cut (a restart, a failover, a network cut)...
    listening_since = listener.connected
    postgres_server.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{database_name(pg_url)}' AND query LIKE 'LISTEN%'"
    )
    # ...the cache is emptied and off until it listens on a new connection.
    wait_for(lambda: listener.connected > listening_since, "the listener did not reconnect")
    wait_for(listener.listening.is_set, "the listener did not listen again")
    assert services.principals.enabled
    assert services.principals.get("h", "site") is None
    assert listener.failures >= 1


def test_stopping_the_listener_switches_the_cache_off(pg_url: str, tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path / "c", pg_url))
    services: Services = app.state.services
    assert not services.principals.enabled  # off until the listener listens
    with TestClient(app):
        listener = services.announcements
        assert listener is not None
        wait_for(listener.listening.is_set, "the listener never started listening")
        assert services.principals.enabled
    assert not services.principals.enabled


def test_pooled_connections_are_pinged_only_after_being_idle(
    pg_url: str, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = Database(pg_url)
    pings: list[float] = []
    real_ping = database.engine.dialect.do_ping

    def counting_ping(dbapi_connection: Any) -> bool:
        pings.append(time.monotonic())
        return bool(real_ping(dbapi_connection))

    monkeypatch.setattr(database.engine.dialect, "do_ping", counting_ping)
    try:
        for _ in range(20):  # busy: back in the pool a moment ago, never pinged
            with database.session() as session:
                assert session.execute(text("SELECT 1")).scalar() == 1
        assert pings == []

        # Idle past the threshold, and meanwhile the server dropped every connection: the
        # first checkout pings, finds it dead, and gets a fresh connection instead of an error.
        postgres_server.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{database_name(pg_url)}'"
        )
        monkeypatch.setattr(idle_ping_module, "IDLE_PING_S", 0.05)
        time.sleep(0.1)
        with database.session() as session:
            assert session.execute(text("SELECT 1")).scalar() == 1
        assert len(pings) >= 1
    finally:
        database.dispose()


def test_a_listener_that_hears_nothing_keeps_the_cache_off(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy that accepts LISTEN but delivers nothing (PgBouncer in transaction pooling mode)
    fails the delivery probe: the token cache stays off and the listener tries again."""
    from aggregator.api import announcements

    monkeypatch.setattr(announcements.AnnouncementListener, "_send_probe", lambda *_: None)
    database = Database(pg_url)
    cache = PrincipalCache()
    listener = announcements.AnnouncementListener(cache, database, probe_s=0.2, retry_s=0.05)
    listener.start()
    try:
        wait_for(lambda: listener.failures >= 2, "the probe never failed")
        assert not cache.enabled and not listener.listening.is_set()
        assert listener.connected == 0
    finally:
        listener.stop()
        database.dispose()
