"""``plan: auto`` with real agents on a real aggregator: fingerprints go up, the planned spec trains."""

from __future__ import annotations

import httpx
import pytest

from data_specs.manifests.fingerprint import compute_fingerprint
from data_specs.manifests.manifest import load_manifest
from data_specs.plan import PlanOptions, make_plan
from data_specs.task_spec import TaskSpec
from site_agent.federation.loop import SiteAgent
from site_agent.federation.retry import Backoff
from site_agent.federation.task_runner import TaskOutcome
from tests.site_agent.conftest import TINY, write_site
from tests.site_agent.federation import live_aggregator
from tests.site_agent.test_federation_e2e import TRAIN, agent_settings, run_agents

OPTIONS = {"base_channels": 4, "max_channels": 8, "max_poolings": 2}


@pytest.mark.slow
def test_agents_train_the_planned_spec(tmp_path) -> None:
    with live_aggregator(tmp_path / "agg") as agg:
        agents, site_ids, manifests = [], [], []
        for i, name in enumerate(("hospital-a", "hospital-b")):
            root = tmp_path / name
            manifests.append(write_site(root / "data", seed=i, n_train=5 + i))
            site_id, token = agg.add_site(name)
            http = httpx.Client(base_url=agg.url, timeout=30)
            agent = SiteAgent(
                agent_settings(root, agg.url, token), http=http, backoff=Backoff(0.05, 0.2, 5)
            )
            agent.prepare()  # enrolls and sends the fingerprint
            agents.append(agent)
            site_ids.append(site_id)
        experiment_id = agg.create_experiment(
            TINY, rounds=1, sites=site_ids, train=TRAIN, plan="auto", plan_options=OPTIONS
        )
        results = run_agents(agents, max_tasks=1)
        assert [getattr(r, "outcomes", r) for r in results] == [[TaskOutcome.ACCEPTED]] * 2
        agg.wait_for(experiment_id, "completed")
        plan = agg.researcher.get(f"/api/v1/experiments/{experiment_id}/plan").json()
        fingerprints = [compute_fingerprint(load_manifest(m)) for m in manifests]
        expected = make_plan(fingerprints, TINY, PlanOptions(**OPTIONS))
        assert plan == expected.model_dump(mode="json")
        assert (
            TaskSpec.model_validate(agg.experiment(experiment_id)["config"]["spec"])
            == expected.spec
        )
        assert expected.spec.target_spacing == pytest.approx((0.8, 0.8))
        assert expected.spec.patch_size == (32, 32) and expected.num_cases == 11
        for agent in agents:
            agent.http.close()
