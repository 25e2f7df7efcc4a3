"""Test-time adaptation: what moves, what never moves, determinism, labels, and TENT."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from data_specs.constants import NormKind
from data_specs.task_spec import TaskSpec, build_unet
from personalization.outside import (
    AdaptConfig,
    RoutedUNet,
    RoutingError,
    adapt,
    build_routed_model,
    global_model,
    tent_adapt,
)
from personalization.outside.losses import entropy_loss
from personalization.outside.views import random_view

pytestmark = pytest.mark.slow  # real training, processes or servers: `make test` only

SPEC_2D = TaskSpec(channels=(4, 8), strides=(2,), patch_size=(32, 32))
SPEC_3D = TaskSpec(spatial_dims=3, channels=(4, 8), strides=(2,), patch_size=(16, 16, 16))
FAST = AdaptConfig(steps=1, lr=1e-2)


def _experts(spec: TaskSpec, n: int = 3) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(n):
        torch.manual_seed(200 + i)
        out.append(build_unet(spec).state_dict())
    return out


def _images(spec: TaskSpec, batches: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    return [torch.randn(2, 1, *spec.patch_size, generator=gen) for _ in range(batches)]


def _router_state(model: RoutedUNet) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if ".router." in k}


@pytest.mark.parametrize("spec", [SPEC_2D, SPEC_3D], ids=["2d", "3d"])
def test_one_step_reaches_every_router(spec: TaskSpec) -> None:
    model = build_routed_model(spec, _experts(spec))
    before = _router_state(model)
    report = adapt(model, _images(spec, 1), FAST)
    assert report.steps == 1 and report.images == 2 and report.method == "routing"
    for name, layer in model.routed_layers().items():
        grad = sum(
            float(p.grad.abs().sum()) for p in layer.router.parameters() if p.grad is not None
        )
        assert grad > 0, f"router of {name} got no gradient"
        assert not torch.equal(layer.router.fc2.weight, before[f"unet.{name}.router.fc2.weight"])
    assert any("submodule" in n for n in model.routed_layers())  # the bottleneck is among them
    assert set(report.mean_mix) == set(model.routed_layers())


def test_adaptation_never_touches_expert_kernels_or_prelu() -> None:
    model = build_routed_model(SPEC_2D, _experts(SPEC_2D))
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "expert_" in k or ".A." in k}
    norms = {
        k: v.clone() for k, v in model.state_dict().items() if k.endswith(("N.weight", "N.bias"))
    }
    adapt(model, _images(SPEC_2D), AdaptConfig(steps=3, lr=1e-2))
    after = model.state_dict()
    assert frozen and all(torch.equal(after[k], v) for k, v in frozen.items())
    assert any(not torch.equal(after[k], v) for k, v in norms.items())  # norm affine may adapt
    assert not model.training


def test_adaptation_is_deterministic_for_a_seed() -> None:
    runs = []
    for _ in range(2):
        model = build_routed_model(SPEC_2D, _experts(SPEC_2D))
        report = adapt(model, _images(SPEC_2D), AdaptConfig(steps=4, lr=1e-2, seed=3))
        runs.append((_router_state(model), [s.total for s in report.losses]))
    assert runs[0][1] == runs[1][1]
    assert all(torch.equal(runs[0][0][k], runs[1][0][k]) for k in runs[0][0])
    other = build_routed_model(SPEC_2D, _experts(SPEC_2D))
    report = adapt(other, _images(SPEC_2D), AdaptConfig(steps=4, lr=1e-2, seed=4))
    assert [s.total for s in report.losses] != runs[0][1]  # the seed matters (augmentations)


def _entropy(model: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(entropy_loss(model(x)))


@pytest.mark.parametrize("norm", [NormKind.BATCH, NormKind.INSTANCE])
def test_adaptation_lowers_entropy_on_a_toy_problem(norm: NormKind) -> None:
    spec = SPEC_2D.model_copy(update={"norm": norm})
    model = build_routed_model(spec, _experts(spec))
    images = _images(spec, 1)
    # Entropy alone with consistency: the share prior and the anchor pull the other way.
    config = AdaptConfig(
        steps=15, lr=2e-2, batch_norm_stats=False, share_weight=0.0, anchor_weight=0.0
    )
    before = _entropy(model, images[0])
    report = adapt(model, images, config)
    assert _entropy(model, images[0]) < before - 1e-3
    assert report.losses[-1].entropy < report.losses[0].entropy
    assert report.seconds > 0 and len(report.losses) == 15


class _Batch(Mapping[str, Any]):
    """A loader batch that records every key read."""

    def __init__(self, image: torch.Tensor, reads: list[str]) -> None:
        self._data = {"image": image, "label": torch.ones_like(image)}
        self._reads = reads

    def __getitem__(self, key: str) -> Any:
        self._reads.append(key)
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("the batch must not be iterated (that would reach the label)")

    def __len__(self) -> int:
        return len(self._data)


def test_labels_are_never_read() -> None:
    reads: list[str] = []
    loader = [_Batch(x, reads) for x in _images(SPEC_2D)]
    adapt(build_routed_model(SPEC_2D, _experts(SPEC_2D)), loader, AdaptConfig(steps=3))
    tent_adapt(global_model(SPEC_2D, _experts(SPEC_2D, 1)[0]), loader, AdaptConfig(steps=3))
    assert reads and set(reads) == {"image"}


def test_bad_inputs_are_refused() -> None:
    model = build_routed_model(SPEC_2D, _experts(SPEC_2D, 2))
    with pytest.raises(RoutingError, match="no images"):
        adapt(model, [], FAST)
    with pytest.raises(RoutingError, match="shape"):
        adapt(model, [torch.zeros(1, 32, 32)], FAST)
    with pytest.raises(RoutingError, match="class_prior"):
        adapt(model, _images(SPEC_2D), AdaptConfig(steps=1, class_prior=(0.2, 0.3, 0.5)))
    with pytest.raises(RoutingError, match="RoutedUNet"):
        adapt(build_unet(SPEC_2D), _images(SPEC_2D), FAST)
    before = _router_state(model)
    with pytest.raises(RoutingError, match="diverged at step 0"):
        adapt(model, [torch.full((2, 1, 32, 32), float("nan"))], FAST)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert not model.training


def test_views_invert_to_the_original_frame() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, 4)
    for _ in range(10):
        view = random_view(x, gen, noise_std=0.0)
        assert torch.equal(view.invert(view.apply(x)), x)
        assert view.rot_k == 0 or view.rot_plane == (2, 3)  # only the square plane turns


def test_tent_moves_only_norm_affine_and_lowers_entropy() -> None:
    state = _experts(SPEC_2D, 1)[0]
    model = global_model(SPEC_2D, state)
    images = _images(SPEC_2D, 1)
    report = tent_adapt(model, images, AdaptConfig(steps=10, lr=2e-2))
    assert report.method == "tent" and report.mean_mix == {}
    after = model.state_dict()
    for key, value in state.items():
        if key.endswith(("N.weight", "N.bias")):
            continue
        if key in after:
            assert torch.equal(after[key], value), key
    assert any(not torch.equal(after[k], state[k]) for k in after if k.endswith("N.weight"))
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(m.running_mean is None for m in bns)  # batch statistics, as in TENT
    assert report.losses[-1].entropy < report.losses[0].entropy
