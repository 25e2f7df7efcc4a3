"""A personalising site reports Dice of the global and of its personal model; plain FedAvg does not."""

from __future__ import annotations

import pytest
import torch

from data_specs.task_spec import build_unet
from data_specs.wire import PersonalizationConfig, TrainConfig
from site_agent.training.trainer import SiteTrainer, cpu_state
from tests.site_agent.conftest import TINY, SquaresDataset


def fresh_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return cpu_state(build_unet(TINY))


def config(method: str) -> TrainConfig:
    return TrainConfig(
        local_epochs=2,
        batch_size=8,
        lr=0.05,
        optimizer="adam",
        seed=3,
        personalization=PersonalizationConfig(method=method),
    )


@pytest.mark.slow  # a subprocess, a real server or real training
def test_iopfl_reports_global_and_personal_dice_of_the_right_models() -> None:
    trainer = SiteTrainer(
        TINY, SquaresDataset(16, seed=0), SquaresDataset(6, seed=1), progress=False
    )
    glob = fresh_state()
    result = trainer.train_round(glob, config("iopfl"), round_=1)
    m = result.metrics
    assert m.val_dice is not None and m.val_dice_global is not None
    assert m.val_dice_personal is not None
    # Each figure is the Dice of the model it names, on the validation split.
    assert m.val_dice_global == pytest.approx(trainer.evaluate_state(glob).mean_dice)
    assert result.personal_state is not None
    assert m.val_dice_personal == pytest.approx(
        trainer.evaluate_state(result.personal_state).mean_dice
    )
    assert m.val_dice_global != pytest.approx(m.val_dice)  # trained beats the untrained global
    # Round 1 of IOP-FL: the personal model is the trained one.
    assert m.val_dice_personal == pytest.approx(m.val_dice)


@pytest.mark.slow  # a subprocess, a real server or real training
def test_the_trainer_model_holds_the_trained_weights_afterwards() -> None:
    trainer = SiteTrainer(
        TINY, SquaresDataset(16, seed=0), SquaresDataset(6, seed=1), progress=False
    )
    result = trainer.train_round(fresh_state(), config("iopfl"), round_=1)
    now = cpu_state(trainer.model)
    assert all(torch.equal(now[k], result.state[k]) for k in now)


@pytest.mark.slow  # a subprocess, a real server or real training
def test_fedavg_without_personalisation_reports_neither() -> None:
    trainer = SiteTrainer(
        TINY, SquaresDataset(16, seed=0), SquaresDataset(6, seed=1), progress=False
    )
    m = trainer.train_round(fresh_state(), config("none"), round_=1).metrics
    assert m.val_dice is not None
    assert m.val_dice_global is None and m.val_dice_personal is None
