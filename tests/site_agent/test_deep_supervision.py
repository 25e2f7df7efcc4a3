"""Deep supervision: auxiliary heads on the lower decoder levels, the model's layout untouched."""

from __future__ import annotations

import pytest
import torch

from data_specs.task_spec import TaskSpec, build_unet
from data_specs.wire import TrainConfig
from site_agent.errors import TrainingError
from site_agent.training.local_training import make_loss
from site_agent.training.variants.deep_supervision import DeepSupervision, decoder_levels
from tests.site_agent.conftest import SquaresDataset

DEEP = TaskSpec(out_channels=2, channels=(4, 8, 16), strides=(2, 2), patch_size=(32, 32))


def test_heads_see_each_level_at_its_resolution() -> None:
    model = build_unet(DEEP).train()
    ds = DeepSupervision(model, DEEP, levels=1)
    x = torch.randn(2, 1, 32, 32)
    labels = torch.randint(0, 2, (2, 1, 32, 32)).float()
    logits = model(x)
    feature = ds._features[0]
    assert feature is not None and tuple(feature.shape) == (2, 4, 16, 16)
    base = make_loss()
    # By hand: (base(full) + 1/2 * base(head(level 1), labels at 16²)) / (1 + 1/2)
    small = torch.nn.functional.interpolate(labels, size=(16, 16), mode="nearest")
    expected = (base(logits, labels) + 0.5 * base(ds.heads[0](feature), small)) / 1.5
    got = ds.loss(base)(logits, labels)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert got.item() != pytest.approx(base(logits, labels).item(), rel=1e-3)
    ds.close()
    assert all(not b._forward_hooks for b in decoder_levels(model, 1))


def test_too_shallow_a_network_is_refused() -> None:
    shallow = TaskSpec(out_channels=2, channels=(4, 8), strides=(2,), patch_size=(32, 32))
    with pytest.raises(TrainingError, match="at least three levels"):
        DeepSupervision(build_unet(shallow), shallow)


@pytest.mark.slow  # a subprocess, a real server or real training
def test_training_with_deep_supervision_keeps_the_layout_and_trains_the_heads() -> None:
    from site_agent.training.trainer import SiteTrainer

    config = TrainConfig(batch_size=4, lr=0.01, optimizer="adam", precision="fp32")
    plain = SiteTrainer(DEEP, SquaresDataset(8, seed=0), progress=False)
    state = {k: v.clone() for k, v in plain.model.state_dict().items()}
    out_plain = plain.train_round(state, config, round_=1, total_rounds=2, tag="e")

    ds_config = config.model_copy(update={"deep_supervision": 1})
    trainer = SiteTrainer(DEEP, SquaresDataset(8, seed=0), progress=False)
    out = trainer.train_round(state, ds_config, round_=1, total_rounds=2, tag="e")
    assert out.state.keys() == out_plain.state.keys()  # nothing of the heads leaves the site
    heads = trainer.optimizer_states["e/main/heads"]
    assert set(heads) == {"0.weight", "0.bias"}
    # The auxiliary loss changed the gradients, so the weights differ from plain training.
    assert any(not torch.equal(out.state[k], out_plain.state[k]) for k in out.state)
    trainer.train_round(state, ds_config, round_=2, total_rounds=2, tag="e")
    again = trainer.optimizer_states["e/main/heads"]
    assert not torch.equal(again["0.weight"], heads["0.weight"])  # carried on and trained
    assert all(not b._forward_hooks for b in decoder_levels(trainer.model, 1))
