"""Consent before sampling, credentials with a lifecycle, scoped audit log, metrics and rate limits."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from aggregator.api.app import create_app
from aggregator.api.deps import Services
from aggregator.settings import AggregatorSettings
from aggregator.storage.db import Researcher
from aggregator.storage.db.models import utcnow
from tests.aggregator.helpers import ADMIN_TOKEN, API, Federation, bearer


def _enroll_without_policy(fed: Federation, name: str) -> tuple[str, dict[str, str]]:
    r = fed.client.post(f"{API}/sites", json={"name": name}, headers=fed.rh)
    r = fed.client.post(
        f"{API}/sites/enroll", json={"enrollment_token": r.json()["enrollment_token"]}
    )
    assert r.status_code == 200, r.text
    return r.json()["site_id"], bearer(r.json()["site_token"])


@pytest.fixture
def undecided(client: TestClient) -> tuple[Federation, dict[str, tuple[str, dict[str, str]]]]:
    fed = Federation.create(client, [])
    sites = {name: _enroll_without_policy(fed, name) for name in ("h1", "h2", "h3")}
    return fed, sites


def test_no_site_is_sampled_without_consent(undecided) -> None:  # type: ignore[no-untyped-def]
    fed, _sites = undecided
    exp = fed.create_experiment(min_sites=2)
    r = fed.client.post(f"{API}/experiments/{exp}/start", headers=fed.rh)
    assert r.status_code == 409 and "0 of 3 usable site(s) approved" in r.json()["detail"]


def test_invitation_shows_what_runs_and_approval_admits_the_site(undecided) -> None:  # type: ignore[no-untyped-def]
    fed, sites = undecided
    exp = fed.create_experiment(min_sites=2, train={"max_steps": 5, "codec": {"name": "topk"}})
    rows = fed.client.get(f"{API}/invitations", headers=sites["h1"][1]).json()
    (row,) = [r for r in rows if r["experiment_id"] == exp]
    assert row["decision"] == "pending" and row["max_steps"] == 5 and row["codec"] == "topk"
    assert row["spec"]["channels"] == [4, 8] and row["researcher"] == "alice"
    for name in ("h1", "h2"):
        r = fed.client.post(f"{API}/invitations/{exp}/approve", headers=sites[name][1])
        assert r.status_code == 200 and r.json()["decision"] == "approved", r.text
    r = fed.client.post(f"{API}/experiments/{exp}/start", headers=fed.rh)
    assert r.status_code == 200, r.text
    assert sorted(r.json()["participants"]) == sorted([sites["h1"][0], sites["h2"][0]])
    # Decisions are taken before the start.
    late = fed.client.post(f"{API}/invitations/{exp}/approve", headers=sites["h3"][1])
    assert late.status_code == 409


def test_one_approved_site_cannot_start_by_default(undecided) -> None:  # type: ignore[no-untyped-def]
    fed, sites = undecided
    body = {"name": "x", "spec": {"patch_size": [32, 32]}, "rounds": 1}
    r = fed.client.post(f"{API}/experiments", json=body, headers=fed.rh)
    assert r.status_code == 201 and r.json()["config"]["min_sites"] == 2
    exp = r.json()["id"]
    fed.client.post(f"{API}/invitations/{exp}/approve", headers=sites["h1"][1])
    r = fed.client.post(f"{API}/experiments/{exp}/start", headers=fed.rh)
    assert r.status_code == 409 and "1 of 3" in r.json()["detail"]


def test_policy_admits_and_a_decline_overrides_it(undecided) -> None:  # type: ignore[no-untyped-def]
    fed, sites = undecided
    for name in ("h1", "h2", "h3"):
        r = fed.client.put(
            f"{API}/sites/me/consent-policy",
            json={"accept": ["researcher:alice"]},
            headers=sites[name][1],
        )
        assert r.status_code == 200, r.text
    exp = fed.create_experiment(min_sites=2)
    fed.client.post(f"{API}/invitations/{exp}/decline", headers=sites["h3"][1])
    r = fed.client.post(f"{API}/experiments/{exp}/start", headers=fed.rh)
    assert r.status_code == 200, r.text
    assert sites["h3"][0] not in r.json()["participants"]
    assert len(r.json()["participants"]) == 2


def test_policy_for_another_researcher_does_not_admit(undecided) -> None:  # type: ignore[no-untyped-def]
    fed, sites = undecided
    for name in ("h1", "h2"):
        fed.client.put(
            f"{API}/sites/me/consent-policy",
            json={"accept": ["researcher:bob"]},
            headers=sites[name][1],
        )
    exp = fed.create_experiment(min_sites=2)
    assert fed.client.post(f"{API}/experiments/{exp}/start", headers=fed.rh).status_code == 409


def test_researcher_rotates_own_token(fed: Federation) -> None:
    old = fed.rh
    r = fed.client.post(f"{API}/researchers/me/rotate", headers=old)
    assert r.status_code == 200
    new = bearer(r.json()["token"])
    assert fed.client.get(f"{API}/experiments", headers=old).status_code == 401
    assert fed.client.get(f"{API}/experiments", headers=new).status_code == 200


def test_admin_revoke_is_final(fed: Federation, services: Services) -> None:
    rid = fed.client.get(f"{API}/experiments", headers=fed.rh)  # the token works
    assert rid.status_code == 200
    with services.database.session() as session:
        researcher_id = session.query(Researcher.id).filter_by(name="alice").scalar()
    admin = bearer(ADMIN_TOKEN)
    assert (
        fed.client.post(f"{API}/researchers/{researcher_id}/revoke", headers=admin).status_code
        == 204
    )
    assert fed.client.get(f"{API}/experiments", headers=fed.rh).status_code == 401
    r = fed.client.post(f"{API}/researchers/{researcher_id}/rotate", headers=admin)
    assert r.status_code == 409 and "final" in r.json()["detail"]


def test_rotate_does_not_re_enable_a_revoked_site(fed: Federation) -> None:
    site_id = fed.sites["site-a"][0]
    assert fed.client.post(f"{API}/sites/{site_id}/revoke", headers=fed.rh).status_code == 200
    r = fed.client.post(f"{API}/sites/{site_id}/rotate", headers=fed.rh)
    assert r.status_code == 409 and "final" in r.json()["detail"]
    assert fed.client.get(f"{API}/tasks/next", headers=fed.sh("site-a")).status_code == 401


def test_tokens_expire_after_their_ttl(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = AggregatorSettings(
        data_dir=tmp_path / "agg",
        admin_token=ADMIN_TOKEN,
        orchestrator_enabled=False,
        token_ttl_days=1.0,
    )
    with TestClient(create_app(settings)) as client:
        fed = Federation.create(client, ["site-a"])
        assert client.get(f"{API}/experiments", headers=fed.rh).status_code == 200
        services = client.app.state.services  # type: ignore[attr-defined]
        with services.database.session() as session:
            row = session.query(Researcher).filter_by(name="alice").one()
            row.token_issued_at = utcnow() - timedelta(days=2)
            session.commit()
        # An edit behind the API's back: the token cache would see it within 30 s; forget now.
        services.principals.clear()
        assert client.get(f"{API}/experiments", headers=fed.rh).status_code == 401
        r = client.get(f"{API}/tasks/next", headers=fed.sh("site-a"))
        assert r.status_code in (200, 204)  # the site's token is still young


def test_metrics_name_hospitals_only_for_the_admin(fed: Federation) -> None:
    exp = fed.create_experiment()
    fed.start(exp)
    fed.client.app.state.services.orchestrator.step()  # type: ignore[attr-defined]
    task = fed.next_task("site-a")
    assert task is not None
    fed.model("site-a", task["task_id"])
    open_text = fed.client.get("/metrics").text
    assert "site-a" not in open_text and "fedseg_bytes_sent" in open_text
    assert 'site="site-a"' in fed.client.get("/metrics", headers=bearer(ADMIN_TOKEN)).text


def test_audit_log_is_scoped_to_the_caller(client: TestClient) -> None:
    alice = Federation.create(client, ["alice-hospital"], researcher="alice")
    bob = Federation.create(client, ["bob-hospital"], researcher="bob")
    seen = client.get(f"{API}/events", headers=bob.rh).json()
    site_ids = {e["detail"].get("site_id") for e in seen}
    assert bob.sites["bob-hospital"][0] in site_ids
    assert alice.sites["alice-hospital"][0] not in site_ids


def test_failed_logins_are_rate_limited(client: TestClient) -> None:
    codes = [
        client.get(f"{API}/experiments", headers=bearer(f"wrong-token-{i}")).status_code
        for i in range(15)
    ]
    assert codes[:10] == [401] * 10
    assert set(codes[10:]) == {429}
    r = client.get(f"{API}/experiments", headers=bearer("another-wrong"))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
