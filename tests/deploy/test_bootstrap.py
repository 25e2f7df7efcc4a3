"""The compose bootstrap against the real aggregator app in memory: idempotent, tokens 0600."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from aggregator.api.app import create_app
from aggregator.settings import AggregatorSettings
from deploy.console.researcher_client import ResearcherApiError, ResearcherClient
from deploy.entrypoints.bootstrap import (
    BootstrapError,
    ensure_researcher,
    ensure_sites,
    start_experiment,
    wait_enrolled,
    wait_healthy,
)

ADMIN = "admin-token-for-tests-0123456789"
NAMES = ["hospital-1", "hospital-2"]


@pytest.fixture
def http(tmp_path: Path) -> Iterator[TestClient]:
    settings = AggregatorSettings(
        data_dir=tmp_path / "agg", admin_token=ADMIN, orchestrator_enabled=False
    )
    with TestClient(create_app(settings)) as client:
        yield client


def _enrollment_token(out: Path, name: str) -> str:
    line = (out / f"{name}.env").read_text().strip()
    key, _, value = line.partition("=")
    assert key == "FEDSEG_SITE_ENROLLMENT_TOKEN"
    return value


def _enroll(http: TestClient, token: str) -> int:
    body = {"enrollment_token": token, "accept_experiments": ["*"]}  # standing consent
    return http.post("/api/v1/sites/enroll", json=body).status_code


def test_researcher_and_sites_are_made_once(http: TestClient, tmp_path: Path) -> None:
    out = tmp_path / "enroll"
    out.mkdir()
    wait_healthy(http, timeout_s=5)
    ensure_researcher(ResearcherClient(http), ADMIN, out, "demo")
    token = (out / "researcher_token").read_text()
    assert stat.S_IMODE((out / "researcher_token").stat().st_mode) == 0o600
    client = ResearcherClient(http)
    ensure_researcher(client, "not-the-admin-token", out, "demo")  # the kept token is reused

    ids = ensure_sites(client, out, NAMES)
    first = {n: _enrollment_token(out, n) for n in NAMES}
    assert ensure_sites(client, out, NAMES) == ids  # nothing new registered
    assert {n: _enrollment_token(out, n) for n in NAMES} == first
    for name in NAMES:
        assert stat.S_IMODE((out / f"{name}.env").stat().st_mode) == 0o600
    sites = http.get("/api/v1/sites", headers={"Authorization": f"Bearer {token}"}).json()
    assert sorted(s["name"] for s in sites) == NAMES


def test_a_lost_token_file_rotates_the_site(http: TestClient, tmp_path: Path) -> None:
    out = tmp_path / "enroll"
    out.mkdir()
    client = ResearcherClient(http)
    ensure_researcher(client, ADMIN, out, "demo")
    ensure_sites(client, out, NAMES)
    old = _enrollment_token(out, "hospital-1")
    (out / "hospital-1.env").unlink()
    ensure_sites(client, out, NAMES)
    new = _enrollment_token(out, "hospital-1")
    assert new != old
    assert _enroll(http, old) >= 400  # the rotated token no longer works
    assert _enroll(http, new) == 200


def test_experiment_starts_once_sites_enrolled(http: TestClient, tmp_path: Path) -> None:
    out = tmp_path / "enroll"
    out.mkdir()
    client = ResearcherClient(http)
    ensure_researcher(client, ADMIN, out, "demo")
    ids = ensure_sites(client, out, NAMES)
    with pytest.raises(BootstrapError, match="not enrolled"):
        wait_enrolled(client, NAMES, timeout_s=0.2, poll_s=0.05)
    for name in NAMES:
        assert _enroll(http, _enrollment_token(out, name)) == 200
    site_ids = wait_enrolled(client, NAMES, timeout_s=5, poll_s=0.05)
    assert site_ids == sorted(ids.values())

    exp_id = start_experiment(client, site_ids, rounds=2)
    got = client.experiment(exp_id)
    assert got.status == "running" and got.config.rounds == 2 and got.participants == site_ids


def test_refusals_name_the_step(http: TestClient, tmp_path: Path) -> None:
    with pytest.raises(ResearcherApiError, match="POST /researchers: HTTP 401"):
        ensure_researcher(ResearcherClient(http), "wrong-admin-token-0000", tmp_path, "demo")
    assert not (tmp_path / "researcher_token").exists()
