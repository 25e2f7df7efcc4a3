"""Deep supervision for the MONAI U-Net, as nnU-Net trains it, without changing the model.

The lower decoder levels of the U-Net get a 1×1 convolution head each, which predicts the
classes at that level's resolution; the loss adds their DiceCE against the label map
down-sampled (nearest) to that resolution, with nnU-Net's weights (1, 1/2, 1/4, …, normalised
to sum to 1). The heads are site-local training aids: they are not part of the model's state
dict, so the federated tensor layout, the aggregation and inference are unchanged. They persist
across rounds beside the site's optimiser state.

Usage::

    ds = DeepSupervision(model, spec, levels=2)
    loss_fn = ds.loss(make_loss())     # reads the features the hooks captured in model(x)
    optimizer = make_optimizer(model, config, extra=ds.parameters())
    ...
    ds.close()                         # removes the hooks
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from data_specs.task_spec import TaskSpec
from site_agent.errors import TrainingError


def decoder_levels(model: nn.Module, levels: int) -> list[nn.Module]:
    """The up-sampling blocks of levels 1..``levels`` below the top of a MONAI ``UNet``.

    Raises:
        TrainingError: the model is not a MONAI U-Net deep enough for ``levels``.
    """
    node = getattr(model, "model", None)
    found: list[nn.Module] = []
    for _ in range(levels):
        if not isinstance(node, nn.Sequential) or len(node) != 3:
            break
        skip = node[1]
        node = getattr(skip, "submodule", None)
        if not isinstance(node, nn.Sequential) or len(node) != 3:
            break
        found.append(node[2])
    if len(found) != levels:
        raise TrainingError(
            f"deep supervision needs a U-Net with at least {levels + 1} decoder levels"
        )
    return found


class DeepSupervision:
    """Auxiliary heads on the U-Net's lower decoder levels (see the module docstring).

    Args:
        model: a MONAI ``UNet`` built from ``spec``.
        spec: its task spec (channels, classes, dimensions).
        levels: decoder levels below the top that get a head. Default 2.
        device: where the heads live. Default the model's device.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: TaskSpec,
        levels: int = 2,
        device: torch.device | str | None = None,
    ) -> None:
        levels = min(levels, len(spec.channels) - 2)
        if levels < 1:
            raise TrainingError("deep supervision needs a U-Net of at least three levels")
        conv = nn.Conv2d if spec.spatial_dims == 2 else nn.Conv3d
        where = device if device is not None else next(model.parameters()).device
        # Level i's up-sampling block outputs channels[i - 1] features.
        self.heads = nn.ModuleList(
            [conv(spec.channels[i], spec.out_channels, kernel_size=1) for i in range(levels)]
        ).to(where)
        self.weights = [0.5 ** (i + 1) for i in range(levels)]
        self._features: list[torch.Tensor | None] = [None] * levels
        self._handles = [
            block.register_forward_hook(self._capture(i))
            for i, block in enumerate(decoder_levels(model, levels))
        ]

    def _capture(self, i: int) -> Any:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            self._features[i] = output if module.training else None

        return hook

    def parameters(self) -> Iterator[nn.Parameter]:
        """The heads' parameters (for the optimiser)."""
        return self.heads.parameters()

    def loss(self, base: nn.Module) -> nn.Module:
        """``base`` on the full-resolution logits plus the weighted auxiliary terms."""
        return _DeepSupervisedLoss(self, base)

    def auxiliary(self, labels: torch.Tensor, base: nn.Module) -> tuple[torch.Tensor, float]:
        """The weighted sum of the heads' losses and the sum of their weights."""
        total = torch.zeros((), device=labels.device)
        used = 0.0
        for i, (head, weight) in enumerate(zip(self.heads, self.weights, strict=True)):
            feature = self._features[i]
            if feature is None:
                continue
            logits = head(feature.float())
            small = F.interpolate(labels.float(), size=logits.shape[2:], mode="nearest")
            total = total + weight * base(logits, small.to(labels.dtype))
            used += weight
            self._features[i] = None
        return total, used

    def state_dict(self) -> dict[str, Any]:
        """The heads' weights (kept beside the optimiser state between rounds)."""
        return self.heads.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the heads' weights from ``state_dict``."""
        self.heads.load_state_dict(state)

    def close(self) -> None:
        """Remove the hooks; the model is as it was."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._features = [None] * len(self._features)


class _DeepSupervisedLoss(nn.Module):
    def __init__(self, ds: DeepSupervision, base: nn.Module) -> None:
        super().__init__()
        self.ds, self.base = ds, base

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        aux, used = self.ds.auxiliary(labels, self.base)
        return (self.base(logits, labels) + aux) / (1.0 + used)
