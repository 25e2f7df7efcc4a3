"""Routed U-Net: routed layers against a per-sample reference, structure, and save/load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from data_specs.constants import NormKind
from data_specs.task_spec import TaskSpec, build_unet
from personalization.outside import (
    OutputAverage,
    RoutedFileError,
    RoutedUNet,
    RoutingError,
    build_routed_model,
    global_model,
    load_routed,
    save_routed,
)
from personalization.outside.layers import RoutedConv
from personalization.outside.routed import ROUTABLE

SPEC_2D = TaskSpec(channels=(4, 8), strides=(2,), patch_size=(32, 32))
SPEC_3D = TaskSpec(spatial_dims=3, channels=(4, 8), strides=(2,), patch_size=(16, 16, 16))


def _experts(spec: TaskSpec, n: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(n):
        torch.manual_seed(100 + i)
        unet = build_unet(spec)
        with torch.no_grad():  # non-trivial norm layers, so "taken from expert 0" is visible
            for name, t in unet.state_dict().items():
                if name.endswith(("N.weight", "N.bias", "running_mean")):
                    t.uniform_(0.5, 1.5)
        out.append(unet.state_dict())
    return out


def _scramble_routers(model: RoutedUNet, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.routed_layers().values():
            for p in layer.router.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("spec", [SPEC_2D, SPEC_3D], ids=["2d", "3d"])
@pytest.mark.parametrize("norm", [NormKind.BATCH, NormKind.INSTANCE])
def test_identical_experts_reproduce_the_plain_unet(spec: TaskSpec, norm: NormKind) -> None:
    spec = spec.model_copy(update={"norm": norm})
    state = _experts(spec, 1)[0]
    plain = global_model(spec, state)
    for gate in ("softmax", "sigmoid"):
        routed = build_routed_model(spec, [state] * 3, gate=gate)
        _scramble_routers(routed)  # any mix of identical kernels is that kernel
        x = torch.randn(2, 1, *spec.patch_size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            torch.testing.assert_close(routed(x), plain(x), rtol=1e-4, atol=1e-5)
            mix = next(iter(routed.routed_layers().values())).last_mix
            assert mix is not None and mix.std() > 0.01  # the routers really were not uniform


def _reference(layer: RoutedConv, x: torch.Tensor) -> torch.Tensor:
    # Straightforward: one conv call per sample with its explicitly mixed kernel.
    mix = layer.mixing_weights(x)
    fn = {(2, False): F.conv2d, (3, False): F.conv3d, (2, True): F.conv_transpose2d}[
        (layer.spatial_dims, layer.transposed)
    ]
    outs = []
    for b in range(x.shape[0]):
        w = sum(mix[b, e] * layer.expert_weight[e] for e in range(layer.num_experts))
        bias = sum(mix[b, e] * layer.expert_bias[e] for e in range(layer.num_experts))
        if layer.transposed:
            outs.append(
                fn(
                    x[b : b + 1],
                    w,
                    bias,
                    layer.stride,
                    layer.padding,
                    layer.output_padding,
                    layer.groups,
                    layer.dilation,
                )
            )
        else:
            outs.append(
                fn(x[b : b + 1], w, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
            )
    return torch.cat(outs)


@pytest.mark.parametrize(
    ("conv", "shape"),
    [
        (nn.Conv2d(4, 6, 3, stride=2, padding=1), (3, 4, 16, 16)),
        (nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2), (2, 4, 9, 11)),
        (nn.Conv3d(2, 4, 3, stride=2, padding=1), (2, 2, 8, 8, 8)),
        (nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1), (2, 6, 8, 8)),
    ],
    ids=["conv2d", "conv2d-groups", "conv3d", "convT2d"],
)
@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
def test_routed_layer_equals_per_sample_conv_with_mixed_kernel(
    conv: nn.Module, shape: tuple[int, ...], gate: str
) -> None:
    gen = torch.Generator().manual_seed(3)
    layer = RoutedConv(conv, num_experts=4, gate=gate)  # type: ignore[arg-type]
    with torch.no_grad():
        layer.set_experts(
            torch.randn(layer.expert_weight.shape, generator=gen),
            torch.randn(layer.expert_bias.shape, generator=gen),
        )
        for p in layer.router.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    x = torch.randn(shape, generator=gen)
    got = layer(x)
    torch.testing.assert_close(got, _reference(layer, x), rtol=1e-4, atol=1e-5)
    assert got.shape == conv(x).shape
    torch.testing.assert_close(layer.last_mix.sum(dim=1), torch.ones(shape[0]))


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
def test_initial_mix_is_uniform(gate: str) -> None:
    model = build_routed_model(SPEC_2D, _experts(SPEC_2D, 3), gate=gate)
    model(torch.randn(2, 1, 32, 32))
    for layer in model.routed_layers().values():
        torch.testing.assert_close(layer.last_mix, torch.full((2, 3), 1 / 3))


@pytest.mark.parametrize("spec", [SPEC_2D, SPEC_3D], ids=["2d", "3d"])
def test_every_convolution_is_routed_over_every_expert(spec: TaskSpec) -> None:
    experts = _experts(spec, 4)
    plain_convs = {n for n, m in build_unet(spec).named_modules() if isinstance(m, ROUTABLE)}
    model = build_routed_model(spec, experts)
    routed = model.routed_layers()
    assert set(routed) == plain_convs
    assert not any(isinstance(m, ROUTABLE) for m in model.modules())
    assert any("submodule" in n for n in routed)  # the bottleneck
    assert any(layer.transposed for layer in routed.values())
    for name, layer in routed.items():
        assert (
            layer.expert_weight.shape[0]
            == layer.expert_bias.shape[0]
            == 4
            == layer.router.fc2.out_features
        )
        for e, state in enumerate(experts):  # no expert silently dropped
            torch.testing.assert_close(
                layer.expert_weight[e], state[f"{name}.weight"], rtol=0, atol=0
            )
            torch.testing.assert_close(layer.expert_bias[e], state[f"{name}.bias"], rtol=0, atol=0)
    own = model.unet.state_dict()
    for key, value in experts[0].items():  # everything else comes from the global model
        if key in own:
            torch.testing.assert_close(own[key], value, rtol=0, atol=0)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in model.adaptable_parameters()}
    assert all(not isinstance(b, nn.Parameter) for b in model.buffers())


def test_experts_that_do_not_match_are_refused() -> None:
    experts = _experts(SPEC_2D, 2)
    experts[1]["model.0.residual.weight"] = torch.zeros(4, 1, 1, 1)
    with pytest.raises(RoutingError, match="expert 1 does not match"):
        build_routed_model(SPEC_2D, experts)
    experts = _experts(SPEC_2D, 2)
    experts[0]["model.0.conv.unit0.adn.N.weight"][1] = float("inf")
    with pytest.raises(RoutingError, match="expert 0 holds NaN or Inf"):
        build_routed_model(SPEC_2D, experts)
    with pytest.raises(RoutingError, match="at least the global model"):
        build_routed_model(SPEC_2D, [])
    with pytest.raises(RoutingError, match="gate"):
        build_routed_model(SPEC_2D, experts[:1], gate="tanh")  # type: ignore[arg-type]


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, gate: str) -> None:
    spec = SPEC_2D.model_copy(update={"norm": NormKind.INSTANCE})
    model = build_routed_model(spec, _experts(spec, 3), gate=gate)
    _scramble_routers(model, seed=5)
    path = tmp_path / "routed.safetensors"
    save_routed(path, model)
    loaded = load_routed(path, spec)
    assert loaded.num_experts == 3 and loaded.gate == gate and loaded.spec == spec
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["routed.safetensors"]  # no temp file left


def test_load_routed_refuses_bad_files(tmp_path) -> None:
    path = tmp_path / "routed.safetensors"
    save_routed(path, build_routed_model(SPEC_2D, _experts(SPEC_2D, 2)))
    with pytest.raises(RoutedFileError, match="task spec"):
        load_routed(path, SPEC_2D.model_copy(update={"out_channels": 3}))
    path.write_bytes(b"not safetensors")
    with pytest.raises(RoutedFileError, match="not a routed model"):
        load_routed(path)
    with pytest.raises(RoutedFileError, match="cannot read"):
        load_routed(tmp_path / "absent.safetensors")


def test_output_average_averages_softmax_outputs() -> None:
    experts = _experts(SPEC_2D, 3)
    avg = OutputAverage(SPEC_2D, experts)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        want = torch.stack([torch.softmax(global_model(SPEC_2D, e)(x), 1) for e in experts]).mean(0)
        torch.testing.assert_close(torch.softmax(avg(x), dim=1), want)


def test_numpy_experts_with_batch_norm_counters_build() -> None:
    """Experts as numpy state dicts (as decoded from a bundle) keep 0-d num_batches_tracked."""
    from data_specs.task_spec import TaskSpec, build_unet
    from personalization.outside import build_routed_model

    spec = TaskSpec(channels=(4, 8), strides=(2,), patch_size=(16, 16), norm="batch")
    state = {k: v.numpy() for k, v in build_unet(spec).state_dict().items()}
    assert any(v.ndim == 0 for v in state.values())
    model = build_routed_model(spec, [state, state])
    assert len(list(model.routed_layers())) > 0
