"""FedBN: exactly the norm layers of 2D and 3D, BatchNorm and InstanceNorm U-Nets stay local."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from data_specs.task_spec import TaskSpec, build_unet
from personalization.errors import StateDictError
from personalization.inside.fedbn import apply_fedbn, fedbn_local_keys

# The three norm layers of a (4, 8) U-Net with one residual unit (the output layer has none).
_NORM_MODULES = [
    "model.0.conv.unit0.adn.N",
    "model.1.submodule.conv.unit0.adn.N",
    "model.2.0.adn.N",
]
_BATCH = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
_INSTANCE = ["weight", "bias"]  # affine, no running statistics


def _spec(norm: str, dims: int) -> TaskSpec:
    return TaskSpec(
        spatial_dims=dims,
        channels=(4, 8),
        strides=(2,),
        norm=norm,
        patch_size=(32,) * dims,
    )


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize(
    ("norm", "kind", "entries"),
    [("batch", nn.BatchNorm2d, _BATCH), ("instance", nn.InstanceNorm2d, _INSTANCE)],
)
def test_local_keys_are_exactly_the_norm_layers(
    norm: str, kind: type[nn.Module], entries: list[str], dims: int
) -> None:
    spec = _spec(norm, dims)
    keys = fedbn_local_keys(spec)
    assert keys == [f"{m}.{e}" for m in _NORM_MODULES for e in entries]

    # Cross-check against the built model: each of those modules is a norm layer of the right
    # dimension, and every other key (convolutions, PReLU) is shared.
    model = build_unet(spec)
    modules = dict(model.named_modules())
    expected_type = getattr(nn, kind.__name__.replace("2d", f"{dims}d"))
    assert all(type(modules[m]) is expected_type for m in _NORM_MODULES)
    assert fedbn_local_keys(model) == keys
    shared = [k for k in model.state_dict() if k not in keys]
    assert shared and not any(k.startswith(tuple(f"{m}." for m in _NORM_MODULES)) for k in shared)
    assert any(k.endswith("conv.weight") for k in shared)
    assert "model.0.conv.unit0.adn.A.weight" in shared


def test_apply_fedbn_takes_own_norm_layers_and_global_rest() -> None:
    spec = _spec("batch", 2)
    keys = fedbn_local_keys(spec)
    torch.manual_seed(0)
    global_state = build_unet(spec).state_dict()
    local_state = {k: v + 1 for k, v in build_unet(spec).state_dict().items()}
    site = apply_fedbn(global_state, local_state, keys)
    assert list(site) == list(global_state)
    for key, value in site.items():
        expected = local_state[key] if key in keys else global_state[key]
        assert torch.equal(value, expected), key
    model = build_unet(spec)
    model.load_state_dict(site)  # a complete, loadable state dict


def test_apply_fedbn_first_round_is_the_global_model() -> None:
    global_state = build_unet(_spec("instance", 2)).state_dict()
    site = apply_fedbn(global_state, None, fedbn_local_keys(_spec("instance", 2)))
    assert site == global_state and site is not global_state


def test_apply_fedbn_refuses_a_local_model_without_its_norm_layers() -> None:
    spec = _spec("batch", 2)
    keys = fedbn_local_keys(spec)
    global_state = build_unet(spec).state_dict()
    partial = {k: v for k, v in global_state.items() if k != keys[0]}
    with pytest.raises(StateDictError, match=keys[0].replace(".", r"\.")):
        apply_fedbn(global_state, partial, keys)


def test_fedbn_local_keys_refuses_other_inputs() -> None:
    with pytest.raises(TypeError, match="TaskSpec"):
        fedbn_local_keys("batch")  # type: ignore[arg-type]
