"""Principals: admin, researchers and sites, each only on its own routes; tokens stored hashed."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from aggregator.api.deps import Services
from aggregator.auth import hash_token
from aggregator.storage.db import Researcher, Site
from tests.aggregator.helpers import ADMIN_TOKEN, API, Federation, bearer


def test_open_routes_need_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/metrics").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", f"{API}/sites"),
        ("get", f"{API}/experiments"),
        ("get", f"{API}/events"),
        ("get", f"{API}/tasks/next"),
        ("post", f"{API}/researchers"),
    ],
)
def test_missing_or_wrong_token_is_401(client: TestClient, method: str, path: str) -> None:
    r = client.request(method, path)
    assert r.status_code == 401
    assert "bearer" in r.json()["detail"].lower()
    assert r.headers["www-authenticate"] == "Bearer"
    r = client.request(method, path, headers=bearer("not-a-real-token-at-all"))
    assert r.status_code == 401
    assert r.json()["detail"]


def test_only_admin_creates_researchers(client: TestClient, fed: Federation) -> None:
    r = client.post(f"{API}/researchers", json={"name": "bob"}, headers=fed.rh)
    assert r.status_code == 401 and r.json()["detail"] == "invalid admin token"
    r = client.post(f"{API}/researchers", json={"name": "bob"}, headers=bearer(ADMIN_TOKEN))
    assert r.status_code == 201 and r.json()["token"]
    again = client.post(f"{API}/researchers", json={"name": "bob"}, headers=bearer(ADMIN_TOKEN))
    assert again.status_code == 409


def test_wrong_kind_of_token_is_403_with_reason(client: TestClient, fed: Federation) -> None:
    r = client.get(f"{API}/tasks/next", headers=fed.rh)
    assert r.status_code == 403
    assert "site token" in r.json()["detail"] and "researcher token was given" in r.json()["detail"]
    r = client.get(f"{API}/experiments", headers=fed.sh("site-a"))
    assert r.status_code == 403 and "site token was given" in r.json()["detail"]
    r = client.get(f"{API}/experiments", headers=bearer(ADMIN_TOKEN))
    assert r.status_code == 403 and "admin token" in r.json()["detail"]


@pytest.mark.skipif(
    os.environ.get("FEDSEG_TEST_DATABASE") == "postgresql",
    reason="it scans the SQLite database file",
)
def test_tokens_are_stored_as_hashes_only(fed: Federation, services: Services) -> None:
    with services.database.session() as session:
        researcher = session.scalar(select(Researcher))
        site = session.scalar(select(Site).where(Site.name == "site-a"))
    assert researcher is not None and site is not None
    assert researcher.token_hash == hash_token(fed.researcher_token)
    assert site.token_hash == hash_token(fed.sites["site-a"][1])
    db_bytes = (services.settings.data_dir / "aggregator.db").read_bytes()
    for token in (fed.researcher_token, fed.sites["site-a"][1], ADMIN_TOKEN):
        assert token.encode() not in db_bytes


def test_enrollment_token_is_one_time(client: TestClient, fed: Federation) -> None:
    r = client.post(f"{API}/sites", json={"name": "site-z"}, headers=fed.rh)
    enrollment = r.json()["enrollment_token"]
    first = client.post(f"{API}/sites/enroll", json={"enrollment_token": enrollment})
    assert first.status_code == 200 and first.json()["site_name"] == "site-z"
    second = client.post(f"{API}/sites/enroll", json={"enrollment_token": enrollment})
    assert second.status_code == 401
    assert (
        client.post(f"{API}/sites/enroll", json={"enrollment_token": "x" * 20}).status_code == 401
    )
    assert client.post(f"{API}/sites/enroll", json={"token": enrollment}).status_code == 422


def test_rotate_and_revoke(client: TestClient, fed: Federation) -> None:
    site_id, old_token = fed.sites["site-a"]
    assert fed.next_task("site-a") is None
    r = client.post(f"{API}/sites/{site_id}/rotate", headers=fed.rh)
    assert r.status_code == 200
    assert client.get(f"{API}/tasks/next", headers=bearer(old_token)).status_code == 401
    sites = {s["name"]: s for s in client.get(f"{API}/sites", headers=fed.rh).json()}
    assert sites["site-a"]["status"] == "registered"
    enrolled = client.post(
        f"{API}/sites/enroll", json={"enrollment_token": r.json()["enrollment_token"]}
    )
    new_token = enrolled.json()["site_token"]
    assert enrolled.json()["site_id"] == site_id
    assert client.get(f"{API}/tasks/next", headers=bearer(new_token)).status_code == 204
    r = client.post(f"{API}/sites/{site_id}/revoke", headers=fed.rh)
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    assert client.get(f"{API}/tasks/next", headers=bearer(new_token)).status_code == 401


def test_another_researcher_cannot_touch_sites_or_experiments(
    client: TestClient, fed: Federation
) -> None:
    other = client.post(
        f"{API}/researchers", json={"name": "mallory"}, headers=bearer(ADMIN_TOKEN)
    ).json()
    mh = bearer(other["token"])
    site_id = fed.sites["site-a"][0]
    r = client.post(f"{API}/sites/{site_id}/revoke", headers=mh)
    assert r.status_code == 403 and "another researcher" in r.json()["detail"]
    exp = fed.create_experiment()
    assert client.get(f"{API}/experiments/{exp}", headers=mh).status_code == 404
    assert client.post(f"{API}/experiments/{exp}/start", headers=mh).status_code == 404
    assert client.get(f"{API}/experiments", headers=mh).json() == []
    assert (
        client.get(f"{API}/sites", headers=mh).status_code == 200
    )  # the federation's sites are shared


def test_dev_server_without_admin_token_disables_admin_routes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from aggregator.api.app import create_app
    from aggregator.settings import AggregatorSettings

    app = create_app(AggregatorSettings(data_dir=tmp_path, dev=True, orchestrator_enabled=False))
    with TestClient(app) as c:
        r = c.post(f"{API}/researchers", json={"name": "a"}, headers=bearer("anything-goes-here"))
        assert r.status_code == 401 and "no admin token" in r.json()["detail"]


def test_last_seen_is_recorded(client: TestClient, fed: Federation) -> None:
    fed.next_task("site-b")
    sites = {s["name"]: s for s in client.get(f"{API}/sites", headers=fed.rh).json()}
    assert sites["site-b"]["last_seen_at"] is not None and sites["site-b"]["status"] == "enrolled"
