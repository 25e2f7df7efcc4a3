"""The one local-aggregator start-up the demo, the simulation and the benchmarks share."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from deploy.console.researcher_client import ResearcherClient
from deploy.launcher.local_aggregator import local_settings, start_aggregator
from deploy.launcher.processes import process_group


@pytest.mark.slow  # a real aggregator process
def test_started_aggregator_is_healthy_and_takes_its_admin_token(tmp_path: Path) -> None:
    with process_group(tmp_path / "logs") as group:
        agg = start_aggregator(
            group, tmp_path / "aggregator", log_level="WARNING", healthy_timeout_s=300
        )
        assert agg.url.startswith("http://127.0.0.1:")
        assert agg.process.name == "aggregator" and agg.process.alive()
        with httpx.Client(base_url=agg.url, timeout=60) as http:
            assert http.get("/healthz").status_code == 200
            researcher = ResearcherClient(http)
            researcher.create_researcher(agg.admin_token, "local-aggregator-test")
            assert researcher.register_site("site_a").enrollment_token
            refused = http.post(
                "/api/v1/researchers",
                json={"name": "intruder"},
                headers={"Authorization": "Bearer not-the-admin-token"},
            )
            assert refused.status_code in (401, 403)
    assert not agg.process.alive()  # the group stopped it
    assert (tmp_path / "aggregator").is_dir()


def test_local_settings_carry_a_fresh_admin_token_and_overrides(tmp_path: Path) -> None:
    settings, admin = local_settings(tmp_path / "agg", orchestrator_interval_s=0.1)
    other, admin2 = local_settings(tmp_path / "agg")
    assert other.orchestrator_interval_s != 0.1  # overrides are per call
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == admin
    assert admin != admin2 and len(admin) >= 40
    assert settings.orchestrator_interval_s == 0.1
    assert settings.data_dir == tmp_path / "agg"
