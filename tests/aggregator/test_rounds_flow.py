"""A whole experiment in memory: tasks, uploads, aggregation checked against numpy."""

from __future__ import annotations

import numpy as np

from aggregator.api.deps import Services
from data_specs.constants import HEADER_SHA256, BundleKind
from data_specs.weights.bundle import decode_bundle
from tests.aggregator.helpers import API, Federation, sha256


def test_two_rounds_fedavg_matches_numpy_weighted_mean(fed: Federation, services: Services) -> None:
    exp = fed.create_experiment(rounds=2)
    fed.start(exp)
    services.orchestrator.step()
    samples = {"site-a": 10, "site-b": 30, "site-c": 60}
    for round_number in (1, 2):
        theta = None
        bodies = {}
        for name, n in samples.items():
            task = fed.next_task(name)
            assert task is not None and task["round"] == round_number
            model = fed.model(name, task["task_id"])
            theta = decode_bundle(model).tensors
            r = fed.train_and_upload(
                name, task, num_samples=n, metrics={"train_loss": 0.5, "val_dice": 0.7}
            )
            assert r.status_code == 200, r.text
            assert r.json()["accepted"] is True and r.json()["duplicate"] is False
            bodies[name] = decode_bundle(fed.model(name, task["task_id"])).tensors  # same θ
        services.orchestrator.step()
        got = decode_bundle(fed.round_model(exp, round_number)).tensors
        assert theta is not None
        # Reference: θ + Σ n_i (W_i − θ) / Σ n_i for float tensors.
        from tests.aggregator.helpers import plausible_weights

        key = "model.0.conv.unit0.conv.weight"
        total = sum(samples.values())
        diffs = [
            plausible_weights(theta, site=s, round_number=round_number)[key] - theta[key]
            for s in sorted(samples)
        ]
        want = theta[key] + np.average(
            np.stack(diffs), axis=0, weights=[samples[s] / total for s in sorted(samples)]
        )
        np.testing.assert_allclose(got[key], want, rtol=1e-5, atol=1e-6)
    info = fed.experiment(exp)
    assert info["status"] == "completed" and info["current_round"] == 2
    rounds = fed.rounds(exp)
    assert [(r["number"], r["status"]) for r in rounds] == [(1, "closed"), (2, "closed")]
    site_rows = rounds[0]["sites"]
    assert {s["site_name"] for s in site_rows} == set(samples)
    assert all(
        s["status"] == "accepted" and s["bytes_up"] > 0 and s["bytes_down"] > 0 for s in site_rows
    )
    assert {s["site_name"]: s["num_samples"] for s in site_rows} == samples
    assert (
        site_rows[0]["metrics"]["train_loss"] == 0.5 and site_rows[0]["metrics"]["val_dice"] == 0.7
    )
    assert rounds[1]["model_sha256"] == sha256(fed.round_model(exp, 2))


def test_task_assignment_carries_spec_seed_and_model(fed: Federation, services: Services) -> None:
    exp = fed.create_experiment(rounds=1)
    fed.start(exp)
    services.orchestrator.step()
    tasks = {name: fed.next_task(name) for name in fed.sites}
    seeds = {t["train"]["seed"] for t in tasks.values() if t}
    assert len(seeds) == 3  # one derived seed per site
    task = tasks["site-a"]
    assert task is not None
    r = fed.client.get(f"{API}/experiments/{exp}/rounds/0/model", headers=fed.rh)
    assert task["model_sha256"] == r.headers[HEADER_SHA256] == sha256(r.content)
    assert task["model_size"] == len(r.content)
    # Asking again returns the same task until the site reports.
    assert fed.next_task("site-a")["task_id"] == task["task_id"]  # type: ignore[index]


def test_diff_updates_and_full_updates_aggregate_alike(fed: Federation, services: Services) -> None:
    exp = fed.create_experiment(rounds=1)
    fed.start(exp)
    services.orchestrator.step()
    for name, kind in (
        ("site-a", BundleKind.DIFF),
        ("site-b", BundleKind.FULL),
        ("site-c", BundleKind.DIFF),
    ):
        task = fed.next_task(name)
        assert task is not None
        assert fed.train_and_upload(name, task, kind=kind).status_code == 200
    services.orchestrator.step()
    assert fed.experiment(exp)["status"] == "completed"
