"""Token answers from memory: no database lookup per request, and revocation still acts at once."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from aggregator.api.deps import Services
from aggregator.api.principal_cache import CachedPrincipal, PrincipalCache
from aggregator.auth import hash_token
from aggregator.storage.db.models import Site, utcnow
from tests.aggregator.helpers import API, Federation, bearer
from tests.aggregator.test_request_hops import counting_hand_overs


def _poll(fed: Federation, name: str) -> int:
    return fed.client.get(f"{API}/tasks/next", headers=fed.sh(name)).status_code


def test_a_known_token_is_answered_without_a_lookup(
    fed: Federation, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _poll(fed, "site-a") == 204  # looked up (enrolment does not cache)
    with counting_hand_overs(monkeypatch) as calls:
        assert _poll(fed, "site-a") == 204
        r = fed.client.get(f"{API}/experiments", headers=fed.rh)
        assert r.status_code == 200
        r = fed.client.get(f"{API}/experiments", headers=fed.rh)
        assert r.status_code == 200
    assert "_site_of" not in calls, calls
    assert calls.count("_researcher_of") <= 1, calls  # looked up once, then from memory
    assert services.principals.hits >= 2


@pytest.mark.parametrize("action", ["revoke", "rotate"])
def test_revoking_or_rotating_a_site_refuses_its_cached_token_at_once(
    fed: Federation, services: Services, action: str
) -> None:
    assert _poll(fed, "site-a") == 204
    assert _poll(fed, "site-a") == 204  # answered from memory
    site_id = fed.sites["site-a"][0]
    r = fed.client.post(f"{API}/sites/{site_id}/{action}", headers=fed.rh)
    assert r.status_code == 200, r.text
    assert _poll(fed, "site-a") == 401
    assert _poll(fed, "site-b") == 204  # the others keep working


@pytest.mark.parametrize("action", ["revoke", "rotate"])
def test_revoking_or_rotating_a_researcher_refuses_its_cached_token_at_once(
    client: TestClient, fed: Federation, action: str
) -> None:
    assert client.get(f"{API}/experiments", headers=fed.rh).status_code == 200
    assert client.get(f"{API}/experiments", headers=fed.rh).status_code == 200  # from memory
    r = client.post(f"{API}/researchers/me/{action}", headers=fed.rh)
    assert r.status_code in (200, 204), r.text
    assert client.get(f"{API}/experiments", headers=fed.rh).status_code == 401
    if action == "rotate":
        assert (
            client.get(f"{API}/experiments", headers=bearer(r.json()["token"])).status_code == 200
        )


def test_an_expired_token_is_refused_even_when_cached(
    fed: Federation, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    services.settings.token_ttl_days = 1.0
    assert _poll(fed, "site-a") == 204
    assert len(services.principals) >= 1
    later = utcnow() + timedelta(days=2)
    monkeypatch.setattr("aggregator.crud.principals.utcnow", lambda: later)
    assert _poll(fed, "site-a") == 401


def _last_seen(services: Services, site_id: str) -> datetime | None:
    services.bookkeeping.flush()
    with services.database.session() as session:
        return session.get(Site, site_id).last_seen_at  # type: ignore[union-attr]


def _age_last_seen(services: Services, site_id: str) -> datetime:
    old = utcnow() - timedelta(seconds=3600)
    with services.database.session() as session:
        site = session.get(Site, site_id)
        assert site is not None
        site.last_seen_at = old
        session.commit()
    return old


def test_last_seen_is_written_every_30_s_in_a_batch_not_by_the_request(
    fed: Federation, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    site_id = fed.sites["site-a"][0]
    _age_last_seen(services, site_id)
    assert _poll(fed, "site-a") == 204  # the first visit this process sees is noted
    seen = _last_seen(services, site_id)
    assert seen is not None and (utcnow() - seen).total_seconds() < 10
    old = _age_last_seen(services, site_id)
    with counting_hand_overs(monkeypatch) as calls:
        assert _poll(fed, "site-a") == 204
    assert "_site_of" not in calls  # fresh: from memory
    assert _last_seen(services, site_id) == old  # noted 30 s at most
    real = time.monotonic
    monkeypatch.setattr("aggregator.api.principal_cache.time.monotonic", lambda: real() + 31)
    with counting_hand_overs(monkeypatch) as calls:
        assert _poll(fed, "site-a") == 204
    assert "_site_of" in calls  # 30 s on: the token is read again
    seen = _last_seen(services, site_id)
    assert seen is not None and (utcnow() - seen).total_seconds() < 10  # and the visit noted


def test_a_token_lookup_writes_nothing(
    fed: Federation, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookup is a read (on PostgreSQL outside a transaction); the visit goes to the
    bookkeeping writer."""
    writes: list[str] = []

    def record(_conn: object, _cursor: object, sql: str, *_: object) -> None:
        if sql.split()[0].upper() in {"UPDATE", "INSERT", "DELETE"}:
            writes.append(sql.split()[0].upper())

    services.principals.clear()
    event.listen(services.database.engine, "before_cursor_execute", record)
    try:
        with counting_hand_overs(monkeypatch) as calls:
            assert _poll(fed, "site-b") == 204
    finally:
        event.remove(services.database.engine, "before_cursor_execute", record)
    assert "_site_of" in calls  # looked up
    assert writes == []
    seen = _last_seen(services, fed.sites["site-b"][0])
    assert seen is not None and (utcnow() - seen).total_seconds() < 10


def test_an_answer_read_before_a_revocation_is_not_kept() -> None:
    cache = PrincipalCache()
    entry = CachedPrincipal("site", "s1", "site-a", None, time.monotonic() + 30)
    generation = cache.generation  # a lookup starts...
    cache.clear()  # ...a revocation commits meanwhile...
    cache.put(hash_token("t"), entry, generation=generation)  # ...its answer comes back late
    assert cache.get(hash_token("t"), "site") is None
    cache.put(hash_token("t"), entry, generation=cache.generation)
    assert cache.get(hash_token("t"), "site") == entry
    assert cache.get(hash_token("t"), "researcher") is None  # another kind of principal


def test_the_cache_is_bounded_and_can_be_off() -> None:
    cache = PrincipalCache(max_entries=2)
    for i in range(3):
        entry = CachedPrincipal("site", f"s{i}", f"n{i}", None, time.monotonic() + 30)
        cache.put(f"h{i}", entry, generation=cache.generation)
    assert len(cache) == 2 and cache.get("h0", "site") is None
    off = PrincipalCache(enabled=False)
    off.put("h", entry, generation=off.generation)
    assert off.get("h", "site") is None


def test_the_cache_is_on_while_token_changes_are_heard(services: Services) -> None:
    """SQLite: always (one process). PostgreSQL: while the listener listens (test_announcements)."""
    assert services.principals.enabled
    assert (services.announcements is None) is services.database.is_sqlite
