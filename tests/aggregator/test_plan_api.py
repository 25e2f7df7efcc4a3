"""``plan: auto`` end to end in memory: sites send fingerprints, start plans, tasks follow the plan."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from aggregator.api.deps import Services
from aggregator.rounds.planning import federation_class_prior
from data_specs.plan import PlanOptions, make_plan
from data_specs.task_spec import TaskSpec, expected_tensors
from data_specs.weights.bundle import decode_bundle
from tests.aggregator.helpers import API, TINY_SPEC, Federation
from tests.data_specs.fingerprint_data import make_fingerprint

OPTIONS = {"base_channels": 4, "max_channels": 8, "max_poolings": 2}
FPS = {
    "site-a": make_fingerprint(spacing=(1.0, 1.0, 8.0), classes=(0.8, 0.2), labelled=1000),
    "site-b": make_fingerprint(spacing=(1.4, 1.4, 9.0), classes=(0.9, 0.1), labelled=3000),
    "site-c": make_fingerprint(spacing=(2.0, 2.0, 7.0), classes=(0.7, 0.3), labelled=1000),
}


def send(fed: Federation, name: str) -> Any:
    body = FPS[name].model_dump(mode="json")
    return fed.client.put(f"{API}/sites/me/fingerprint", json=body, headers=fed.sh(name))


def auto_experiment(fed: Federation, **extra: Any) -> str:
    sites = [fed.sites[n][0] for n in ("site-a", "site-b", "site-c")]
    return fed.create_experiment(plan="auto", plan_options=OPTIONS, sites=sites, **extra)


def test_plan_auto_end_to_end(client: TestClient, fed: Federation, services: Services) -> None:
    assert send(fed, "site-a").json()["changed"] is True
    assert send(fed, "site-a").json()["changed"] is False  # the same fingerprint again
    send(fed, "site-b")
    experiment_id = auto_experiment(fed)
    r = client.get(f"{API}/experiments/{experiment_id}/plan", headers=fed.rh)
    assert r.status_code == 404 and "not started" in r.json()["detail"]

    r = client.post(f"{API}/experiments/{experiment_id}/start", headers=fed.rh)
    assert r.status_code == 409 and "site-c" in r.json()["detail"], r.text
    assert "site-a" not in r.json()["detail"]
    assert fed.experiment(experiment_id)["status"] == "created"

    send(fed, "site-c")
    fed.start(experiment_id)
    plan = client.get(f"{API}/experiments/{experiment_id}/plan", headers=fed.rh).json()
    expected = make_plan(list(FPS.values()), TINY_SPEC, PlanOptions(**OPTIONS))
    assert plan == expected.model_dump(mode="json")
    assert plan["target_spacing"] == [1.4, 1.4]
    assert plan["class_frequencies"] == pytest.approx([0.84, 0.16])

    experiment = fed.experiment(experiment_id)
    spec = TaskSpec.model_validate(experiment["config"]["spec"])
    assert spec == expected.spec and spec != TINY_SPEC
    assert experiment["config"]["train"]["batch_size"] == expected.batch_size
    assert experiment["spec_hash"] == spec.spec_hash()

    services.orchestrator.step()  # opens round 1
    for name in ("site-a", "site-b", "site-c"):
        task = fed.next_task(name)
        assert task is not None
        assert TaskSpec.model_validate(task["spec"]) == expected.spec
        assert task["train"]["batch_size"] == expected.batch_size
        if name == "site-a":
            model = decode_bundle(fed.model(name, task["task_id"]))
            assert set(model.tensors) == set(expected_tensors(expected.spec))
        r = fed.train_and_upload(name, task)
        assert r.status_code == 200 and r.json()["accepted"], r.text
    services.orchestrator.step()  # aggregates round 1 with the planned layout
    assert fed.rounds(experiment_id)[0]["status"] == "closed"
    with services.database.session() as session:
        prior = federation_class_prior(session, experiment_id=experiment_id)
    assert prior == pytest.approx([0.84, 0.16])


def test_fingerprint_route_refuses_extra_fields_and_researchers(
    client: TestClient, fed: Federation
) -> None:
    body = {**FPS["site-a"].model_dump(mode="json"), "cases": ["patient_001.nii.gz"]}
    r = client.put(f"{API}/sites/me/fingerprint", json=body, headers=fed.sh("site-a"))
    assert r.status_code == 422
    r = client.put(
        f"{API}/sites/me/fingerprint", json=FPS["site-a"].model_dump(mode="json"), headers=fed.rh
    )
    assert r.status_code == 403
    site_id = fed.sites["site-a"][0]
    r = client.get(f"{API}/sites/{site_id}/fingerprint", headers=fed.rh)
    assert r.status_code == 404
    send(fed, "site-a")
    r = client.get(f"{API}/sites/{site_id}/fingerprint", headers=fed.rh)
    assert r.status_code == 200 and r.json() == FPS["site-a"].model_dump(mode="json")


def test_plan_refuses_a_spec_that_does_not_fit_the_sites(
    client: TestClient, fed: Federation
) -> None:
    for name in FPS:
        send(fed, name)
    spec = TINY_SPEC.model_copy(update={"out_channels": 3}).model_dump(mode="json")
    experiment_id = auto_experiment(fed, spec=spec)
    r = client.post(f"{API}/experiments/{experiment_id}/start", headers=fed.rh)
    assert r.status_code == 409 and "out_channels" in r.json()["detail"]


def test_experiment_without_plan_keeps_its_spec_and_has_no_plan(
    client: TestClient, fed: Federation, services: Services
) -> None:
    experiment_id = fed.create_experiment()
    fed.start(experiment_id)
    assert fed.experiment(experiment_id)["config"]["spec"] == TINY_SPEC.model_dump(mode="json")
    r = client.get(f"{API}/experiments/{experiment_id}/plan", headers=fed.rh)
    assert r.status_code == 404 and "asks for no plan" in r.json()["detail"]
    with services.database.session() as session:  # no fingerprints: no prior
        assert federation_class_prior(session, experiment_id=experiment_id) is None
    for name in FPS:
        send(fed, name)
    with services.database.session() as session:  # every participant sent one
        prior = federation_class_prior(session, experiment_id=experiment_id)
    assert prior == pytest.approx([0.84, 0.16])
