"""The MONAI-free U-Net used by ``fedseg site infer`` on pictures equals MONAI's, key for key and bit for bit."""

from __future__ import annotations

import pytest
import torch

from data_specs.constants import NormKind
from data_specs.task_spec import TaskSpec, build_unet
from site_agent.clinic.plain_unet import build_plain_unet

SPECS = [
    TaskSpec(channels=(4, 8), strides=(2,), patch_size=(16, 16), out_channels=2),
    TaskSpec(
        channels=(4, 8, 16, 32),
        strides=(2, 2, 1),
        num_res_units=2,
        patch_size=(16, 16),
        out_channels=4,
        norm=NormKind.INSTANCE,
        dropout=0.2,
    ),
    TaskSpec(channels=(4, 8, 8), strides=(2, 2), num_res_units=0, patch_size=(16, 16)),
    TaskSpec(
        spatial_dims=3,
        in_channels=2,
        channels=(4, 8, 16),
        strides=(2, 2),
        patch_size=(16, 16, 8),
        out_channels=3,
    ),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.spatial_dims}d-res{s.num_res_units}")
def test_same_state_dict_and_same_outputs(spec: TaskSpec) -> None:
    torch.manual_seed(0)
    monai_net = build_unet(spec)
    # Non-trivial running statistics and PReLU slopes, as a trained model has.
    state = {
        k: torch.rand_like(v) + 0.5 if v.is_floating_point() else v
        for k, v in monai_net.state_dict().items()
    }
    monai_net.load_state_dict(state)
    plain = build_plain_unet(spec)
    assert list(plain.state_dict()) == list(monai_net.state_dict())
    plain.load_state_dict(state, strict=True)
    x = torch.randn(2, spec.in_channels, *spec.patch_size)
    with torch.inference_mode():
        want = monai_net.eval()(x)
        got = plain.eval()(x)
    assert torch.equal(got, want)
