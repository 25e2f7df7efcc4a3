"""DP-SGD's budget stop through the service: the sites' ``epsilon_next`` against the budget."""

from __future__ import annotations

from typing import Any

import pytest

from aggregator.api.deps import Services
from data_specs.constants import NormKind
from tests.aggregator.helpers import API, TINY_SPEC, Federation

INSTANCE = TINY_SPEC.model_copy(update={"norm": NormKind.INSTANCE})


def _report(total: float, following: float) -> dict[str, Any]:
    spent = {
        "epsilon_round": 1.0,
        "epsilon_total": total,
        "delta": 1e-5,
        "noise_multiplier": 1.1,
        "max_grad_norm": 1.0,
        "sample_rate": 0.25,
        "steps": 4,
        "epsilon_next": following,
    }
    return {"train_loss": 0.5, "dp_sgd": spent}


def _round(fed: Federation, services: Services, following: dict[str, float]) -> None:
    services.orchestrator.step()
    tasks = {name: fed.next_task(name) for name in fed.sites}
    assert all(tasks.values()), tasks
    for name, task in tasks.items():
        assert task is not None
        r = fed.train_and_upload(name, task, metrics=_report(following[name] - 1, following[name]))
        assert r.status_code == 200 and r.json()["accepted"], r.text
    services.orchestrator.step()


@pytest.mark.parametrize("budget", [5.0, None])
def test_experiment_stops_when_a_sites_next_round_would_exceed_the_budget(
    fed: Federation, services: Services, budget: float | None
) -> None:
    dp_sgd: dict[str, Any] = {"noise_multiplier": 1.1}
    if budget is not None:
        dp_sgd["epsilon_budget"] = budget
    exp = fed.create_experiment(
        rounds=5, spec=INSTANCE.model_dump(mode="json"), train={"dp_sgd": dp_sgd}
    )
    fed.start(exp)
    _round(fed, services, {"site-a": 3.0, "site-b": 5.0, "site-c": 4.0})  # 5.0: still fits
    assert fed.experiment(exp)["status"] == "running"
    _round(fed, services, {"site-a": 4.0, "site-b": 5.5, "site-c": 4.5})  # site-b cannot go on
    services.orchestrator.step()
    rounds = fed.rounds(exp)
    events = fed.client.get(f"{API}/events", params={"experiment_id": exp}, headers=fed.rh).json()
    spent = [e for e in events if e["kind"] == "privacy.budget_spent"]
    if budget is None:  # ε is only reported: round 3 opens
        assert fed.experiment(exp)["status"] == "running"
        assert [r["number"] for r in rounds] == [1, 2, 3] and spent == []
        return
    assert fed.experiment(exp)["status"] == "completed"
    assert [r["number"] for r in rounds] == [1, 2]
    assert rounds[1]["sample_privacy"]["epsilon_total"] == 4.5
    assert rounds[1]["sample_privacy"]["epsilon_budget"] == budget
    assert len(spent) == 1
    detail = spent[0]["detail"]
    assert (detail["level"], detail["rounds"], detail["epsilon_next"]) == ("sample", 2, 5.5)
    assert detail["epsilon_budget"] == budget and detail["epsilon"] == 4.5
