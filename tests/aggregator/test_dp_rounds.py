"""Central client-level DP through the service: clip bound, noisy mean, ε per round, budget stop."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from aggregator.api.deps import Services
from data_specs.privacy.accountant import epsilon, rounds_within
from data_specs.weights.bundle import decode_bundle
from data_specs.weights.unet_layout import statistic_keys_of
from tests.aggregator.helpers import API, TINY_SPEC, Federation, plausible_weights

DP = {"clip_norm": 5.0, "noise_multiplier": 0.8, "delta": 1e-5}


def _tasks(fed: Federation) -> dict[str, dict[str, Any]]:
    return {name: t for name in fed.sites if (t := fed.next_task(name)) is not None}


def _floats(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float64) for k, v in tensors.items() if v.dtype.kind == "f"}


def test_dp_round_clips_adds_calibrated_noise_and_reports_epsilon(
    fed: Federation, services: Services
) -> None:
    exp = fed.create_experiment(rounds=1, privacy={"dp": DP})
    public = fed.experiment(exp)
    cfg = public["config"]
    assert cfg["update_norm_bound"] == pytest.approx(5.0 * (1 + 1e-4))
    # batch-norm running statistics stay at the sites under DP (never averaged, never noised)
    stats = set(statistic_keys_of(TINY_SPEC))
    assert stats and set(public["local_keys"]) == stats
    fed.start(exp)
    services.orchestrator.step()
    tasks = _tasks(fed)
    assert {t["clip_norm"] for t in tasks.values()} == {5.0}
    theta = _floats(decode_bundle(fed.model("site-a", tasks["site-a"]["task_id"])).tensors)
    diffs = []
    for name in ("site-a", "site-b"):
        r = fed.train_and_upload(name, tasks[name], num_samples=10 if name == "site-a" else 1000)
        assert r.status_code == 200 and r.json()["accepted"], r.text
        w = plausible_weights(
            decode_bundle(fed.model(name, tasks[name]["task_id"])).tensors,
            site=name,
            round_number=1,
        )
        diffs.append({k: w[k].astype(np.float64) - theta[k] for k in theta})
    # an update above the clip norm is refused by the intake
    big = fed.train_and_upload("site-c", tasks["site-c"], scale=1.0)
    assert big.status_code == 200 and not big.json()["accepted"]
    assert "norm" in big.json()["reason"]
    services.orchestrator.step()
    new = _floats(decode_bundle(fed.round_model(exp, 1)).tensors)
    # sample counts are ignored and the sum is divided by the 3 sampled sites, not the 2 accepted
    shared = [k for k in theta if k not in stats]
    residual = np.concatenate(
        [(new[k] - theta[k] - (diffs[0][k] + diffs[1][k]) / 3).ravel() for k in shared]
    )
    for key in stats & set(theta):  # the global keeps its initial statistics, exactly
        np.testing.assert_array_equal(new[key], theta[key])
    assert residual.size > 500
    assert np.std(residual) == pytest.approx(0.8 * 5.0 / 3, rel=0.1)
    assert abs(np.mean(residual)) < 5 * 0.8 * 5.0 / 3 / np.sqrt(residual.size)  # 5 std errors
    privacy = fed.rounds(exp)[0]["privacy"]
    assert privacy["epsilon_total"] == pytest.approx(epsilon(0.8, 1.0, 1, 1e-5))
    assert privacy["epsilon_round"] == privacy["epsilon_total"] and privacy["delta"] == 1e-5


def test_experiment_stops_when_the_budget_is_spent(fed: Federation, services: Services) -> None:
    budget = (epsilon(2.0, 1.0, 2, 1e-5) + epsilon(2.0, 1.0, 3, 1e-5)) / 2  # fits 2 rounds
    assert rounds_within(2.0, 1.0, 1e-5, budget, 10) == 2
    dp = {"clip_norm": 100.0, "noise_multiplier": 2.0, "epsilon_budget": budget}
    exp = fed.create_experiment(rounds=10, privacy={"dp": dp})
    fed.start(exp)
    for _ in range(4):
        services.orchestrator.step()
        for name, task in _tasks(fed).items():
            assert fed.train_and_upload(name, task).status_code == 200
    services.orchestrator.step()
    assert fed.experiment(exp)["status"] == "completed"
    rounds = fed.rounds(exp)
    assert [r["number"] for r in rounds] == [1, 2]
    totals = [r["privacy"]["epsilon_total"] for r in rounds]
    assert totals[0] < totals[1] <= budget
    events = fed.client.get(f"{API}/events", params={"experiment_id": exp}, headers=fed.rh).json()
    spent = [e for e in events if e["kind"] == "privacy.budget_spent"]
    assert len(spent) == 1 and spent[0]["detail"]["rounds"] == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"strategy": {"name": "median"}}, "mean-based strategy"),
        ({"train": {"codec": {"name": "quantize"}}}, "cannot combine with the update codec"),
        (
            {"privacy": {"secure_aggregation": {}}, "strategy": {"name": "trimmed_mean"}},
            "privacy.secure_aggregation needs a mean-based strategy",
        ),
        ({"privacy": {"dp": {"mode": "distributed"}}}, "needs secure_aggregation"),
        (
            {
                "privacy": {
                    "dp": {"mode": "distributed", "adaptive": {}},
                    "secure_aggregation": {},
                }
            },
            "dp.adaptive is implemented for dp.mode=central only",
        ),
    ],
)
def test_privacy_options_that_cannot_hold_are_refused(
    fed: Federation, overrides: dict[str, Any], message: str
) -> None:
    body = {"privacy": {"dp": DP}, **overrides}
    body.setdefault("name", "tiny")
    from tests.aggregator.helpers import TINY_SPEC

    body.update({"spec": TINY_SPEC.model_dump(mode="json"), "rounds": 1})
    r = fed.client.post(f"{API}/experiments", json=body, headers=fed.rh)
    assert r.status_code == 422
    assert message in r.text


def test_adaptive_clipping_moves_c_from_noisy_bits_and_raises_the_update_noise(
    fed: Federation, services: Services
) -> None:
    from aggregator.crud.experiments import config_of, get_experiment
    from aggregator.privacy.adaptive_clipping import round_norm_bound
    from aggregator.storage.db import DpRoundClip
    from data_specs.privacy.dp import split_noise

    adaptive = {"target_quantile": 0.5, "learning_rate": 0.2, "bit_share": 0.5}
    exp = fed.create_experiment(rounds=2, privacy={"dp": {**DP, "adaptive": adaptive}})
    fed.start(exp)
    services.orchestrator.step()
    tasks = _tasks(fed)
    assert {t["clip_norm"] for t in tasks.values()} == {5.0}
    theta = _floats(decode_bundle(fed.model("site-a", tasks["site-a"]["task_id"])).tensors)
    stats = set(statistic_keys_of(TINY_SPEC))
    total = {k: np.zeros_like(v) for k, v in theta.items()}
    for name, task in tasks.items():  # every update far inside C: every bit says "unclipped"
        r = fed.train_and_upload(name, task, metrics={"dp_unclipped": True})
        assert r.status_code == 200 and r.json()["accepted"], r.text
        w = plausible_weights(
            decode_bundle(fed.model(name, task["task_id"])).tensors, site=name, round_number=1
        )
        for k in theta:
            total[k] += w[k].astype(np.float64) - theta[k]
    services.orchestrator.step()
    new = _floats(decode_bundle(fed.round_model(exp, 1)).tensors)
    residual = np.concatenate(
        [(new[k] - theta[k] - total[k] / 3).ravel() for k in theta if k not in stats]
    )
    # the update noise uses z_Δ = z / √(1 − s), not z: the bits took their share of the round
    z_update, sigma_b = split_noise(0.8, 0.5)
    assert z_update == pytest.approx(0.8 / math.sqrt(0.5))
    assert np.std(residual) == pytest.approx(z_update * 5.0 / 3, rel=0.1)
    with services.database.session() as session:
        row = session.get(DpRoundClip, (exp, 1))
        nxt = session.get(DpRoundClip, (exp, 2))
        assert row is not None and nxt is not None and row.unclipped_share is not None
        share = row.unclipped_share
        assert abs(share - 1.0) < 6 * sigma_b / 3  # 3 set bits plus N(0, σ_b²), over 3 sites
        assert nxt.clip_norm == pytest.approx(5.0 * math.exp(-0.2 * (share - 0.5)))
        cfg = config_of(get_experiment(session, experiment_id=exp))
        bound = round_norm_bound(session, experiment_id=exp, cfg=cfg, round_number=2)
        assert bound == pytest.approx(nxt.clip_norm * (1 + 1e-4))
    services.orchestrator.step()
    tasks = _tasks(fed)
    assert len(tasks) == 3
    assert all(t["clip_norm"] == pytest.approx(nxt.clip_norm) for t in tasks.values())
    for name, task in tasks.items():
        assert fed.train_and_upload(name, task, metrics={"dp_unclipped": False}).status_code == 200
    services.orchestrator.step()
    rounds = fed.rounds(exp)
    assert [r["privacy"]["clip_norm"] for r in rounds] == [5.0, pytest.approx(nxt.clip_norm)]
    # the accountant composes the configured z: the bits' noise is inside it
    assert rounds[1]["privacy"]["epsilon_total"] == pytest.approx(epsilon(0.8, 1.0, 2, 1e-5))
    assert rounds[1]["privacy"]["noise_multiplier"] == 0.8
