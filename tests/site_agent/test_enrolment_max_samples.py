"""The agent declares its sample-count cap at enrolment; the aggregator caps the site's updates at it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from aggregator.api.app import create_app
from aggregator.rounds.guards.safeguards import cap_samples
from aggregator.settings import AggregatorSettings
from site_agent.federation.client import AggregatorClient
from site_agent.federation.enrollment import declared_max_samples, enroll
from site_agent.federation.retry import Backoff
from site_agent.federation.workdir import WorkDir
from site_agent.settings import SiteSettings
from tests.aggregator.helpers import ADMIN_TOKEN, API, Federation
from tests.site_agent.conftest import write_site


def _manifest(root: Path, *, n_train: int, dims: int) -> Path:
    path = write_site(root, n_train=n_train, n_val=1, n_test=0)
    manifest = json.loads(path.read_text())
    manifest["spatial_dims"] = dims
    path.write_text(json.dumps(manifest))
    return path


def _settings(tmp_path: Path, **kw: object) -> SiteSettings:
    return SiteSettings(
        aggregator_url="https://agg.test",
        work_dir=tmp_path / "work",
        **kw,  # type: ignore[arg-type]
    )


def test_the_declaration_is_the_training_cases_of_a_3d_task(tmp_path: Path) -> None:
    volumes = _manifest(tmp_path / "v", n_train=7, dims=3)
    slices = _manifest(tmp_path / "s", n_train=7, dims=2)
    assert declared_max_samples(_settings(tmp_path, manifest=volumes)) == 7
    # A 2D task may train on slices of volumes: its case count is no cap.
    assert declared_max_samples(_settings(tmp_path, manifest=slices)) is None
    # The hospital's own figure wins (room for cases added later).
    assert declared_max_samples(_settings(tmp_path, manifest=volumes, max_samples=50)) == 50
    assert declared_max_samples(_settings(tmp_path, manifest=slices, max_samples=50)) == 50
    assert declared_max_samples(_settings(tmp_path)) is None  # no manifest configured
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert declared_max_samples(_settings(tmp_path, manifest=broken)) is None


@pytest.mark.parametrize(("dims", "override", "cap"), [(3, None, 7), (2, None, None), (2, 40, 40)])
def test_enrolment_sends_the_declaration_and_it_caps_the_site(
    tmp_path: Path, dims: int, override: int | None, cap: int | None
) -> None:
    settings = AggregatorSettings(
        data_dir=tmp_path / "agg", admin_token=ADMIN_TOKEN, orchestrator_enabled=False
    )
    with TestClient(create_app(settings)) as http:
        fed = Federation.create(http, [])
        r = http.post(f"{API}/sites", json={"name": "hospital-a"}, headers=fed.rh)
        assert r.status_code == 201, r.text
        site_settings = _settings(
            tmp_path,
            manifest=_manifest(tmp_path / "data", n_train=7, dims=dims),
            enrollment_token=SecretStr(r.json()["enrollment_token"]),
            max_samples=override,
        )
        client = AggregatorClient(http, backoff=Backoff(initial=0.01, maximum=0.01, retries=0))
        response = enroll(client, site_settings, WorkDir(site_settings.work_dir))
        services = http.app.state.services  # type: ignore[attr-defined]
        with services.database.session() as session:
            capped = cap_samples(
                session,
                claimed={"a": 10**9, "b": 5, "c": 5},
                site_ids={"a": response.site_id, "b": "other-1", "c": "other-2"},
            )
    # Without a declaration the claim is capped at 10x the round's median (5) instead.
    assert capped["a"] == (cap if cap is not None else 50)
