"""A tiny simulation through the real aggregator and site-agent code paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_specs.sources.synth import synthesize
from data_specs.task_spec import TaskSpec
from deploy.launcher.simulation import SimulationConfig, run_simulation

pytestmark = pytest.mark.slow  # real training, processes or servers: `make test` only

TINY = TaskSpec(out_channels=4, channels=(4, 8), strides=(2,), patch_size=(32, 32))


def test_tiny_noniid_simulation_runs_every_round_through_the_api(tmp_path: Path) -> None:
    manifests = synthesize(tmp_path / "data", sites=2, cases=10, dims=2, seed=3)
    cfg = SimulationConfig(
        manifests=manifests,
        out_dir=tmp_path / "run",
        spec=TINY,
        partition="noniid",
        num_sites=3,
        fraction=0.6,
        rounds=2,
        personalization="iopfl",
        seed=3,
    )
    result = run_simulation(cfg)
    assert result.status == "completed"
    closed = [r for r in result.rounds if r["status"] == "closed"]
    assert [r["number"] for r in closed] == [1, 2]
    # C = 0.6 of 3 sites: ceil(1.8) = two sampled per round, each accepted with its sample count.
    for rnd in closed:
        assert len(rnd["sampled"]) == 2
        assert all(s["status"] == "accepted" and s["num_samples"] > 0 for s in rnd["sites"])
    assert result.bytes_up > 0 and result.bytes_down > 0
    assert set(result.final_dice) == {"site_0", "site_1", "site_2"}
    for row in result.final_dice.values():
        assert 0.0 <= row["global"] <= 1.0
        assert "personal" in row
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["result"]["experiment_id"] == result.experiment_id
    assert (tmp_path / "run" / "dice_per_round.png").stat().st_size > 0
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
