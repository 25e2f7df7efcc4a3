"""Baselines routing is measured against: the global model, an output average, and TENT.

- ``global_model``: the global model alone (expert 0), no adaptation.
- ``OutputAverage``: every expert runs and their softmax outputs are averaged; E forward passes
  where routing needs one.
- ``tent_adapt``: TENT (Wang et al., ICLR 2021), entropy minimisation over the norm layers'
  affine parameters of one model, BatchNorm normalising with batch statistics.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from data_specs.task_spec import TaskSpec, build_unet
from personalization.outside.adapt import AdaptConfig, AdaptReport, run_adaptation
from personalization.outside.errors import RoutingError
from personalization.outside.routed import NORMS, _as_tensor


def global_model(spec: TaskSpec, state: Mapping[str, Any]) -> nn.Module:
    """The spec's plain U-Net with ``state`` loaded (strict), in eval mode.

    Args:
        spec: the task spec. Example: ``bundle.spec``.
        state: a state dict (torch or numpy). Example: ``bundle.experts[0]``.
    """
    model = build_unet(spec)
    model.load_state_dict({k: _as_tensor(v) for k, v in state.items()}, strict=True)
    return model.eval()


class OutputAverage(nn.Module):
    """Average of every expert's softmax output: an output ensemble, not one model.

    ``forward`` returns the *log* of the averaged probabilities, so that ``softmax`` (or
    ``argmax``) of the output, as applied to any model's logits, gives the average exactly.

    Args:
        spec: the task spec. Example: ``bundle.spec``.
        experts: E plain U-Net state dicts (torch or numpy). Example: ``bundle.experts``.
    """

    def __init__(self, spec: TaskSpec, experts: Sequence[Mapping[str, Any]]) -> None:
        super().__init__()
        if not experts:
            raise RoutingError("OutputAverage needs at least one expert, got 0")
        self.spec = spec
        self.experts = nn.ModuleList(global_model(spec, state) for state in experts)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``log(mean_e softmax(expert_e(x)))``, shape ``(B, C, *spatial)``."""
        probs = torch.stack([torch.softmax(m(x), dim=1) for m in self.experts]).mean(dim=0)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def configure_tent(model: nn.Module) -> list[nn.Parameter]:
    """Prepare a plain model for TENT and return the parameters it adapts.

    As in the paper, BatchNorm layers drop their running estimates (``running_mean`` and
    ``running_var`` become ``None``), so they normalise with batch statistics during
    adaptation *and* at inference afterwards; their state-dict keys disappear accordingly.
    Only the norm layers' affine parameters are trainable afterwards.

    Args:
        model: a plain U-Net, e.g. ``global_model(spec, bundle.experts[0])``.

    Returns:
        The norm layers' affine parameters.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[nn.Parameter] = []
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
        if isinstance(m, NORMS):
            for p in m.parameters(recurse=False):
                p.requires_grad_(True)
                params.append(p)
    if not params:
        raise RoutingError("TENT needs norm layers with affine parameters; the model has none")
    return params


def tent_adapt(
    model: nn.Module, images: Iterable[Any], config: AdaptConfig | None = None
) -> AdaptReport:
    """TENT on a plain U-Net, in place: entropy minimisation over norm affine parameters.

    Args:
        model: a plain U-Net of ``spec`` (``global_model``); reconfigured by ``configure_tent``.
        images: re-iterable of image batches or dicts with ``"image"`` (labels ignored).
            Example: ``[torch.randn(2, 1, 32, 32)]``.
        config: uses ``steps``, ``lr`` and ``seed``; the objective is entropy alone (the other
            weights are ignored). Default ``AdaptConfig()``.

    Returns:
        The report (``method="tent"``, no mixing weights).
    """
    config = config or AdaptConfig()
    tent = config.model_copy(
        update={
            "entropy_weight": 1.0,
            "consistency_weight": 0.0,
            "shape_weight": 0.0,
            "smoothness_weight": 0.0,
            "share_weight": 0.0,
            "anchor_weight": 0.0,
            "batch_norm_stats": True,
        }
    )
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Conv3d)]
    if not convs:
        raise RoutingError(f"TENT expects a U-Net with convolutions, got {type(model).__name__}")
    params = configure_tent(model)
    losses, prior, seen, seconds = run_adaptation(
        model, params, images, tent, spatial_dims=convs[0].weight.dim() - 2, out_channels=None
    )
    return AdaptReport(
        method="tent",
        steps=len(losses),
        images=seen,
        seconds=round(seconds, 4),
        losses=losses,
        class_prior=prior,
    )
