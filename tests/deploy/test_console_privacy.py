"""ε per round and in total in ``fedseg experiments watch`` and ``show`` (a DP experiment)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from data_specs.researcher.experiments import ExperimentPublic
from data_specs.researcher.rounds import RoundPublic
from deploy.cli import app
from deploy.console import console_cli
from deploy.console.watch_view import WatchState, privacy_text, render, round_line, round_record
from tests.aggregator.helpers import TINY_SPEC

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
DP = {"clip_norm": 1.0, "noise_multiplier": 1.1, "delta": 1e-5, "epsilon_budget": 8.0}


def experiment(dp: dict[str, Any] | None) -> ExperimentPublic:
    config: dict[str, Any] = {"name": "dp-run", "spec": TINY_SPEC.model_dump(mode="json")}
    config |= {"rounds": 3, "min_sites": 1}
    if dp is not None:
        config["privacy"] = {"dp": dp}
    return ExperimentPublic.model_validate(
        {
            "id": "e1",
            "name": "dp-run",
            "status": "running",
            "config": config,
            "spec_hash": "0" * 64,
            "participants": ["s1"],
            "local_keys": [],
            "initial_model_sha256": None,
            "current_round": 2,
            "failure_reason": None,
            "created_at": NOW,
            "started_at": NOW,
            "finished_at": None,
        }
    )


def a_round(number: int, status: str = "closed", eps: float | None = None) -> RoundPublic:
    site = {
        "site_id": "s1",
        "site_name": "hospital-a",
        "task_id": f"t{number}",
        "status": "accepted" if status == "closed" else "assigned",
        "num_samples": 10,
        "metrics": {"val_dice": 0.5 + 0.1 * number} if status == "closed" else None,
        "bytes_up": 1,
        "bytes_down": 1,
        "update_sha256": None,
        "reject_reason": None,
        "failure_reason": None,
        "reported_at": NOW if status == "closed" else None,
    }
    privacy = None
    if eps is not None:
        privacy = {
            "epsilon_round": 0.9,
            "epsilon_total": eps,
            "delta": 1e-5,
            "noise_multiplier": 1.1,
            "clip_norm": 1.0,
            "epsilon_budget": 8.0,
        }
    return RoundPublic.model_validate(
        {
            "number": number,
            "attempt": 0,
            "status": status,
            "sampled": ["s1"],
            "opened_at": NOW,
            "deadline": NOW + timedelta(minutes=5),
            "closed_at": NOW if status == "closed" else None,
            "reason": None,
            "model_sha256": None,
            "sites": [site],
            "privacy": privacy,
        }
    )


ROUNDS = [a_round(1, eps=0.9), a_round(2, eps=1.4), a_round(3, status="open")]


def test_watch_shows_epsilon_spent_and_per_round() -> None:
    exp = experiment(DP)
    text = privacy_text(exp, ROUNDS)
    assert text == "DP on: ε 1.400 spent after round 2 of budget 8 (δ=1e-05; ε 0.900 per round)"
    assert privacy_text(exp, ROUNDS[2:]) == (
        "DP on: ε 0 spent of budget 8 (δ=1e-05; no round closed yet)"
    )
    assert privacy_text(experiment(None), ROUNDS) is None
    assert round_line(ROUNDS[1]).endswith("; ε 0.900 this round, 1.400 in total")
    assert "ε" not in round_line(a_round(1))
    assert json.loads(round_record(ROUNDS[1]))["privacy"]["epsilon_total"] == 1.4
    console = Console(record=True, width=160)
    state = WatchState()
    state.update(ROUNDS)
    console.print(render(exp, ROUNDS, state, NOW))
    screen = console.export_text()
    assert "ε 1.400 spent after round 2 of budget 8" in screen
    console = Console(record=True, width=160)
    console.print(render(experiment(None), ROUNDS, state, NOW))
    assert "ε" not in console.export_text()


class FakeClient:
    def __init__(self, exp: ExperimentPublic) -> None:
        self.exp = exp

    def experiment(self, _id: str) -> ExperimentPublic:
        return self.exp

    def rounds(self, _id: str) -> list[RoundPublic]:
        return ROUNDS


@pytest.mark.parametrize("dp", [DP, None])
def test_show_prints_epsilon_columns_for_dp(
    monkeypatch: pytest.MonkeyPatch, dp: dict[str, Any] | None
) -> None:
    @contextlib.contextmanager
    def session(*_args: Any, **_kwargs: Any) -> Iterator[FakeClient]:
        yield FakeClient(experiment(dp))

    monkeypatch.setattr(console_cli, "_session", session)
    monkeypatch.setenv("COLUMNS", "200")
    # The module's console read COLUMNS when it was imported (pytest-xdist workers set 80).
    monkeypatch.setattr(console_cli, "_out", Console(soft_wrap=True))
    out = CliRunner().invoke(app, ["experiments", "show", "e1"])
    assert out.exit_code == 0, out.output
    if dp is None:
        assert "ε" not in out.stdout
        return
    assert "ε 1.400 spent after round 2" in out.stdout
    assert "ε round" in out.stdout and "ε total" in out.stdout
    row2 = next(line for line in out.stdout.splitlines() if "│ 2 " in line and "hospital" in line)
    assert "0.900" in row2 and "1.400" in row2
