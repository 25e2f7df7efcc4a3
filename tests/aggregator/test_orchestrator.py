"""The round state machine: deadlines, retries, failure, sampling, idempotent aggregation, server state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, select

from aggregator.api.deps import Services
from aggregator.rounds.sampling import sample_sites
from aggregator.storage.db import Experiment, GlobalModel, Round
from aggregator.strategies import ClientUpdate, build_strategy
from data_specs.weights.bundle import decode_bundle
from tests.aggregator.conftest import FakeClock
from tests.aggregator.helpers import API, Federation, plausible_weights, sha256


def _tasks(fed: Federation) -> dict[str, dict[str, Any]]:
    return {name: t for name in fed.sites if (t := fed.next_task(name)) is not None}


def test_deadline_closes_round_with_enough_updates(
    fed: Federation, services: Services, clock: FakeClock
) -> None:
    exp = fed.create_experiment(rounds=1, min_sites=2, round_deadline_s=60)
    fed.start(exp)
    services.orchestrator.step()
    tasks = _tasks(fed)
    for name in ("site-a", "site-b"):
        assert fed.train_and_upload(name, tasks[name]).status_code == 200
    services.orchestrator.step()
    assert fed.rounds(exp)[0]["status"] == "open"  # site-c still has time
    clock.advance(61)
    services.orchestrator.step()
    rnd = fed.rounds(exp)[0]
    assert rnd["status"] == "closed"
    assert {s["site_name"]: s["status"] for s in rnd["sites"]} == {
        "site-a": "accepted",
        "site-b": "accepted",
        "site-c": "expired",
    }
    assert fed.experiment(exp)["status"] == "completed"


def test_round_retries_then_experiment_fails_with_reason(
    fed: Federation, services: Services, clock: FakeClock
) -> None:
    exp = fed.create_experiment(rounds=1, min_sites=2, round_deadline_s=60, max_round_retries=1)
    fed.start(exp)
    services.orchestrator.step()
    first = _tasks(fed)
    assert fed.train_and_upload("site-a", first["site-a"]).status_code == 200
    clock.advance(61)
    services.orchestrator.step()
    rounds = fed.rounds(exp)
    assert [(r["attempt"], r["status"]) for r in rounds] == [(0, "failed"), (1, "open")]
    assert (
        "deadline passed with 1 accepted update(s) of 3 sampled; min_sites is 2"
        in rounds[0]["reason"]
    )
    second = _tasks(fed)
    assert {t["task_id"] for t in second.values()}.isdisjoint(t["task_id"] for t in first.values())
    # Everyone reports, but only one update is accepted: no need to wait for the deadline.
    assert fed.train_and_upload("site-a", second["site-a"]).status_code == 200
    for name in ("site-b", "site-c"):
        r = fed.client.post(
            f"{API}/tasks/{second[name]['task_id']}/failure",
            json={"reason": "no data"},
            headers=fed.sh(name),
        )
        assert r.status_code == 200
    services.orchestrator.step()
    info = fed.experiment(exp)
    assert info["status"] == "failed"
    assert info["failure_reason"].startswith(
        "round 1 failed after 2 attempt(s): every sampled site reported"
    )
    assert 'fedseg_rounds_total{outcome="retried"} 1.0' in fed.client.get("/metrics").text


def test_sampling_is_seeded_by_seed_round_attempt(
    fed: Federation, services: Services, clock: FakeClock
) -> None:
    fed.add_site("site-d")
    exp = fed.create_experiment(rounds=1, fraction=0.5, min_sites=1, round_deadline_s=10, seed=3)
    participants = fed.start(exp)["participants"]
    services.orchestrator.step()
    clock.advance(11)
    services.orchestrator.step()  # nobody answered: retry with attempt 1
    rounds = fed.rounds(exp)
    # Sampled by site name (stable across deployments), reported as site ids.
    name_of = {site_id: name for name, (site_id, _) in fed.sites.items()}
    assert set(name_of) == set(participants)
    for r in rounds[:2]:
        want = sample_sites(
            sorted(name_of.values()),
            fraction=0.5,
            min_sites=1,
            seed=3,
            round_number=1,
            attempt=r["attempt"],
        )
        assert sorted(name_of[s] for s in r["sampled"]) == want and len(want) == 2


def test_sample_sites_properties() -> None:
    ids = [f"s{i:02d}" for i in range(10)]
    a = sample_sites(ids, fraction=0.3, min_sites=2, seed=1, round_number=4, attempt=0)
    assert a == sample_sites(
        list(reversed(ids)), fraction=0.3, min_sites=2, seed=1, round_number=4, attempt=0
    )
    assert len(a) == 3 and a == sorted(a)
    assert (
        len(sample_sites(ids, fraction=0.05, min_sites=2, seed=1, round_number=4, attempt=0)) == 2
    )
    assert sample_sites(ids, fraction=1.0, min_sites=1, seed=1, round_number=1, attempt=0) == ids
    draws = {
        tuple(sample_sites(ids, fraction=0.3, min_sites=1, seed=1, round_number=r, attempt=0))
        for r in range(20)
    }
    assert len(draws) > 10


def test_aggregation_is_idempotent_after_a_crash_before_commit(
    fed: Federation, services: Services
) -> None:
    exp = fed.create_experiment(rounds=1)
    fed.start(exp)
    services.orchestrator.step()
    for name, task in _tasks(fed).items():
        assert fed.train_and_upload(name, task, num_samples=5 + len(name)).status_code == 200
    services.orchestrator.step()
    first = fed.round_model(exp, 1)
    # Roll the database back to "aggregating": what a kill -9 between blob write and commit leaves.
    with services.database.session() as session:
        session.execute(
            delete(GlobalModel).where(GlobalModel.experiment_id == exp, GlobalModel.round == 1)
        )
        rnd = session.scalar(select(Round).where(Round.experiment_id == exp))
        experiment = session.get(Experiment, exp)
        assert rnd is not None and experiment is not None
        rnd.status, rnd.closed_at = "aggregating", None
        experiment.status, experiment.current_round, experiment.finished_at = "running", 0, None
        session.commit()
    services.orchestrator.step()
    assert fed.round_model(exp, 1) == first
    assert fed.experiment(exp)["status"] == "completed"


def test_fedadam_state_is_persisted_between_rounds(fed: Federation, services: Services) -> None:
    params = {"server_lr": 0.05}
    exp = fed.create_experiment(rounds=2, strategy={"name": "fedadam", "params": params})
    fed.start(exp)
    services.orchestrator.step()
    samples = {"site-a": 4, "site-b": 9, "site-c": 1}
    strategy = build_strategy("fedadam", params)
    theta = decode_bundle(fed.round_model(exp, 0)).tensors
    state: dict[str, np.ndarray] = {}
    for round_number in (1, 2):
        for name, task in _tasks(fed).items():
            assert fed.train_and_upload(name, task, num_samples=samples[name]).status_code == 200
        services.orchestrator.step()
        updates = [
            ClientUpdate(
                name,  # the aggregation order is by site name
                n,
                {
                    k: np.asarray(v - theta[k])
                    for k, v in plausible_weights(
                        theta, site=name, round_number=round_number
                    ).items()
                },
            )
            for name, n in samples.items()
        ]
        theta, state = strategy.aggregate(theta, updates, state, frozenset())
        got = decode_bundle(fed.round_model(exp, round_number)).tensors
        for key, value in theta.items():
            np.testing.assert_array_equal(got[key], value, err_msg=key)
    with services.database.session() as session:
        model = session.get(GlobalModel, (exp, 2))
        assert model is not None and model.state_sha256 is not None
        assert services.blobs.exists(model.state_sha256)
    assert fed.rounds(exp)[1]["model_sha256"] == sha256(fed.round_model(exp, 2))


def test_sampling_and_seeds_follow_site_names_not_random_ids(tmp_path: Path) -> None:
    """Two fresh aggregators, same site names (new random ids): same sampled sites, same seeds."""
    from fastapi.testclient import TestClient

    from aggregator.api.app import create_app
    from aggregator.settings import AggregatorSettings
    from tests.aggregator.helpers import ADMIN_TOKEN

    def first_round(folder: str) -> dict[str, int]:
        settings = AggregatorSettings(
            data_dir=tmp_path / folder, admin_token=ADMIN_TOKEN, orchestrator_enabled=False
        )
        with TestClient(create_app(settings)) as client:
            fed = Federation.create(client, ["h1", "h2", "h3", "h4", "h5", "h6"])
            exp = fed.create_experiment(fraction=0.5, min_sites=1, seed=11)
            fed.start(exp)
            client.app.state.services.orchestrator.step()  # type: ignore[attr-defined]
            return {
                name: task["train"]["seed"]
                for name in fed.sites
                if (task := fed.next_task(name)) is not None
            }

    a, b = first_round("one"), first_round("two")
    assert len(a) == 3
    assert a == b
