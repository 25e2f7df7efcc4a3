"""The benchmark's sleep agent keeps in step with the real trainer's interface."""

from __future__ import annotations

import inspect
import time

import numpy as np

from benchmarks.sleep_site import SleepTrainer
from data_specs.wire import TrainConfig
from site_agent.training.trainer import SiteTrainer


def test_sleep_trainer_takes_every_argument_the_real_trainer_takes() -> None:
    real = inspect.signature(SiteTrainer.train_round).parameters
    sleep = inspect.signature(SleepTrainer.train_round).parameters
    assert set(real) <= set(sleep), sorted(set(real) - set(sleep))


def test_sleep_trainer_waits_and_perturbs_every_float_weight() -> None:
    state = {"w": np.zeros((4, 4), np.float32), "n": np.array(3, np.int64)}
    started = time.perf_counter()
    result = SleepTrainer(0.2).train_round(state, TrainConfig(seed=1), round_=2, total_rounds=3)
    assert time.perf_counter() - started >= 0.2
    assert result.num_samples == 100 and result.metrics.train_seconds is not None
    assert float(result.state["w"].abs().max()) > 0  # noise added
    assert int(result.state["n"]) == 3  # integers untouched
