"""unet_layout: the U-Net's state-dict layout by arithmetic equals what build_unet builds."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from data_specs.constants import NormKind
from data_specs.task_spec import TaskSpec, build_unet, expected_tensors
from data_specs.weights.unet_layout import (
    initial_weights,
    norm_keys_of,
    parameter_count,
    unet_layout,
)
from personalization.state_dict import norm_keys

SPECS = [
    TaskSpec(
        spatial_dims=dims,
        in_channels=in_ch,
        out_channels=out_ch,
        channels=channels,
        strides=strides,
        num_res_units=nru,
        norm=norm,
        patch_size=(patch,) * dims,
    )
    for dims in (2, 3)
    for nru in (0, 1, 2)
    for norm in (NormKind.BATCH, NormKind.INSTANCE)
    for in_ch, out_ch, channels, strides, patch in [
        (1, 2, (4, 8), (2,), 16),
        (2, 4, (3, 5, 7), (1, 2), 16),
        (1, 3, (4, 8, 8, 16), (2, 1, 3), 24),
        (1, 2, (8, 16, 32, 64, 128), (2, 2, 2, 2), 32),
    ]
]


def _torch_layout(spec: TaskSpec) -> dict[str, tuple[tuple[int, ...], str]]:
    model = build_unet(spec)
    return {k: (tuple(v.shape), str(v.numpy().dtype)) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.spec_hash())
def test_layout_and_parameter_count_match_build_unet(spec: TaskSpec) -> None:
    model = build_unet(spec)
    want = _torch_layout(spec)
    got = unet_layout(spec)
    assert list(got.items()) == list(want.items())  # same names, shapes, dtypes and order
    assert parameter_count(spec) == sum(p.numel() for p in model.parameters())
    assert list(norm_keys_of(spec)) == norm_keys(model)
    assert expected_tensors(spec) == want


@pytest.mark.parametrize("spec", SPECS[:8], ids=lambda s: s.spec_hash())
def test_initial_weights_load_into_the_torch_model(spec: TaskSpec) -> None:
    weights = initial_weights(spec, seed=3)
    model = build_unet(spec)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    assert all(np.isfinite(v).all() for v in weights.values())


def test_initial_weights_follow_torch_default_distributions() -> None:
    spec = TaskSpec(channels=(16, 32, 64), strides=(2, 2), num_res_units=1, patch_size=(32, 32))
    ours = initial_weights(spec, seed=0)
    torch.manual_seed(0)
    theirs = {k: v.numpy() for k, v in build_unet(spec).state_dict().items()}
    for key, value in theirs.items():
        mine = ours[key]
        assert mine.dtype == value.dtype, key
        if value.size >= 256:  # large enough for the spread to be compared
            assert abs(mine.std() - value.std()) < 0.15 * value.std(), key
            assert np.abs(mine).max() <= np.abs(value).max() * 1.05 + 1e-6, key
        elif key.endswith(("N.weight", "N.bias", "running_mean", "running_var", "A.weight")):
            np.testing.assert_array_equal(mine, value, err_msg=key)


def test_initial_weights_are_reproducible_per_seed() -> None:
    spec = SPECS[0]
    a, b, c = initial_weights(spec, 1), initial_weights(spec, 1), initial_weights(spec, 2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["model.0.conv.weight"], c["model.0.conv.weight"])


def test_layout_of_a_deep_network_needs_no_recursion() -> None:
    spec = TaskSpec.model_construct(
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        channels=(2,) * 3000,
        strides=(1,) * 2999,
        num_res_units=0,
        norm=NormKind.INSTANCE,
    )
    assert parameter_count(spec) > 0  # 3000 levels: deeper than Python's recursion limit


def test_aggregator_layout_imports_neither_torch_nor_monai() -> None:
    code = textwrap.dedent(
        """
        import sys
        from aggregator.storage.global_models import build_initial_weights
        from aggregator.rounds.lifecycle import spec_layout
        from data_specs.task_spec import TaskSpec, expected_tensors
        spec = TaskSpec(channels=(4, 8, 16), strides=(2, 2), norm="batch")
        expected, local = spec_layout(spec)
        assert expected == expected_tensors(spec) and local
        assert len(build_initial_weights(spec, 0)) == len(expected)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "monai"))
        assert not heavy, heavy
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
