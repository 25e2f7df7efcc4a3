"""The trainer learns, is deterministic, applies FedProx / Ditto / FedBN, and is a MONAI ClientAlgo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.fl.client import ClientAlgo
from monai.fl.utils.constants import ExtraItems, FlStatistics, WeightType
from monai.fl.utils.exchange_object import ExchangeObject

from data_specs.task_spec import build_unet
from data_specs.wire import PersonalizationConfig, TrainConfig
from personalization.state_dict import norm_keys
from site_agent.errors import ModelMismatchError, TrainingError
from site_agent.training.client_algo import TRAIN_CONFIG_KEY, SiteClientAlgo
from site_agent.training.trainer import SiteTrainer, cpu_state
from tests.site_agent.conftest import TINY, SquaresDataset

FAST = TrainConfig(
    local_epochs=2,
    batch_size=8,
    lr=0.05,
    optimizer="adam",
    seed=3,
    personalization=PersonalizationConfig(method="none"),
)

pytestmark = pytest.mark.slow  # real training, processes or servers: `make test` only


@pytest.fixture(scope="module")
def data() -> tuple[SquaresDataset, SquaresDataset]:
    return SquaresDataset(32, seed=0), SquaresDataset(8, seed=1)


def fresh_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return cpu_state(build_unet(TINY))


def test_loss_falls_and_dice_rises_over_rounds(data, tmp_path) -> None:
    trainer = SiteTrainer(TINY, *data, tensorboard_dir=tmp_path / "tb", progress=False)
    first = trainer.evaluate_state(fresh_state())
    state, losses, dices = fresh_state(), [], []
    for r in range(1, 4):
        result = trainer.train_round(
            state, FAST.model_copy(update={"seed": r}), round_=r, tag="exp"
        )
        state = result.state
        losses.append(result.metrics.train_loss)
        dices.append(result.metrics.val_dice)
    trainer.close()
    assert losses[-1] < losses[0] * 0.5
    assert dices[-1] > max(first.mean_dice, 0.0) + 0.3
    assert dices[-1] > 0.7
    assert result.num_samples == 32 and result.steps == 2 * 4
    assert result.metrics.num_val_cases == 8 and result.metrics.val_hd95 is not None
    assert list((tmp_path / "tb" / "exp").glob("events.out.tfevents.*"))


def test_same_seed_same_weights_and_max_steps(data) -> None:
    config = FAST.model_copy(update={"max_steps": 3})
    a = SiteTrainer(TINY, data[0], progress=False).train_round(fresh_state(), config)
    b = SiteTrainer(TINY, data[0], progress=False).train_round(fresh_state(), config)
    assert a.steps == 3
    for key in a.state:
        assert torch.equal(a.state[key], b.state[key]), key
    c = SiteTrainer(TINY, data[0], progress=False).train_round(
        fresh_state(), config.model_copy(update={"seed": 4})
    )
    assert any(not torch.equal(a.state[k], c.state[k]) for k in a.state)


def test_fedprox_keeps_weights_nearer_the_global_model(data) -> None:
    config = FAST.model_copy(update={"optimizer": "sgd", "lr": 0.1, "max_steps": 4})
    start = fresh_state()
    params = {n for n, _ in build_unet(TINY).named_parameters()}
    free = SiteTrainer(TINY, data[0], progress=False).train_round(start, config)
    prox = SiteTrainer(TINY, data[0], progress=False).train_round(
        start, config.model_copy(update={"fedprox_mu": 3.0})
    )

    def dist(state: dict[str, torch.Tensor]) -> float:
        return sum(float((state[k] - start[k]).pow(2).sum()) for k in params)

    assert dist(prox.state) < dist(free.state)


def test_fedbn_keeps_own_norm_layers_and_ditto_trains_a_personal_model(data) -> None:
    trainer = SiteTrainer(TINY, data[0], progress=False)
    keys = norm_keys(build_unet(TINY))
    fedbn = FAST.model_copy(
        update={"personalization": PersonalizationConfig(method="fedbn"), "max_steps": 1}
    )
    own = fresh_state()
    own = {k: (v + 5.0 if k in keys and v.is_floating_point() else v) for k, v in own.items()}
    result = trainer.train_round(
        fresh_state(), fedbn.model_copy(update={"lr": 1e-9}), local_keys=keys, personal_state=own
    )
    weight = next(k for k in keys if k.endswith(".weight"))
    assert torch.allclose(result.state[weight], own[weight], atol=1e-3)  # started from its own
    personal = result.personal_state
    assert personal is not None and set(personal) == set(result.state)
    for key in result.state:  # FedBN keeps the trained model itself as the personal model
        assert torch.equal(personal[key], result.state[key]), key

    ditto = FAST.model_copy(
        update={"personalization": PersonalizationConfig(method="ditto"), "max_steps": 2}
    )
    start = fresh_state()
    result = trainer.train_round(fresh_state(), ditto)
    personal = result.personal_state
    assert personal is not None and set(personal) == set(start)
    floats = [k for k in start if start[k].is_floating_point()]
    # v was trained (it left θ) and is its own model (not the uploaded W)
    assert any(not torch.equal(personal[k], start[k]) for k in floats)
    assert any(not torch.equal(personal[k], result.state[k]) for k in floats)
    assert all(torch.isfinite(personal[k]).all() for k in floats)


def test_refuses_weights_of_another_spec_and_empty_data(data) -> None:
    trainer = SiteTrainer(TINY, data[0], progress=False)
    other = cpu_state(build_unet(TINY.model_copy(update={"channels": (4, 16)})))
    with pytest.raises(ModelMismatchError, match="task spec"):
        trainer.train_round(other, FAST)
    with pytest.raises(TrainingError, match="no batch"):
        SiteTrainer(TINY, SquaresDataset(0, seed=0), progress=False).train_round(
            fresh_state(), FAST
        )


def test_client_algo_lifecycle_with_exchange_objects(data) -> None:
    algo = SiteClientAlgo(SiteTrainer(TINY, *data, progress=False))
    assert isinstance(algo, ClientAlgo)
    algo.initialize({ExtraItems.CLIENT_NAME: "site-a"})
    start = fresh_state()
    global_weights = ExchangeObject(
        weights={k: v.numpy() for k, v in start.items()}, weight_type=WeightType.WEIGHTS
    )
    algo.train(global_weights, {TRAIN_CONFIG_KEY: FAST.model_dump()})
    full = algo.get_weights()
    assert full.weight_type == WeightType.WEIGHTS
    assert set(full.weights) == set(start)
    assert full.statistics[FlStatistics.NUM_EXECUTED_ITERATIONS] == 8
    assert full.statistics[FlStatistics.TOTAL_DATA] == 32
    assert set(full.metrics) >= {"train_loss", "val_dice", "num_val_cases"}
    diff = algo.get_weights({"weight_type": WeightType.WEIGHT_DIFF})
    assert diff.weight_type == WeightType.WEIGHT_DIFF
    key = next(k for k in start if start[k].is_floating_point())
    np.testing.assert_allclose(diff.weights[key] + start[key], full.weights[key], atol=1e-6)
    report = algo.evaluate(ExchangeObject(weights=full.weights, weight_type=WeightType.WEIGHTS))
    # the same weights on the same validation split: the Dice the round reported
    assert report.metrics["val_dice"] == pytest.approx(full.metrics["val_dice"], abs=1e-6)
    assert report.metrics["val_dice"] > 0.0
    with pytest.raises(TrainingError, match="full weights"):
        algo.train(ExchangeObject(weights=full.weights, weight_type=WeightType.WEIGHT_DIFF))
    algo.finalize()


def test_abort_stops_training(data) -> None:
    trainer = SiteTrainer(TINY, data[0], progress=False)
    calls = {"n": 0}
    original = trainer.model.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2:
            trainer.request_abort()
        return original(x)

    trainer.model.forward = forward  # type: ignore[method-assign]
    result = trainer.train_round(fresh_state(), FAST.model_copy(update={"local_epochs": 5}))
    assert result.steps == 2
