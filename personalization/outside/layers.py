"""A routed convolution: E frozen expert kernels mixed per sample by a small learned router.

One layer of IOP-FL's outside personalisation (Jiang et al. 2022): the input's global average
pool goes through ``Linear -> ReLU -> Linear`` to E mixing weights, and the layer convolves each
sample with ``sum_e r_e * W_e`` (and bias ``sum_e r_e * b_e``). The mixed kernel is one kernel,
so a routed network is one model, not an ensemble of outputs.

Gates (``gate``): ``"softmax"`` (default) or ``"sigmoid"`` normalised by its sum,
``r_e = sigmoid(z_e) / sum_j sigmoid(z_j)``. Both give a convex combination: the kernel keeps
the scale the following norm layer was trained for, and a mix of identical experts *is* that
expert. The reference code's raw sigmoid (sum anywhere in (0, E)) rescales kernels, so it is
not offered. The router's last layer starts at zero, so every gate starts at the uniform mix 1/E.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Gate = Literal["softmax", "sigmoid"]
GATES: tuple[str, ...] = ("softmax", "sigmoid")

_CONV_FN: dict[tuple[int, bool], Callable[..., torch.Tensor]] = {
    (2, False): F.conv2d,
    (3, False): F.conv3d,
    (2, True): F.conv_transpose2d,
    (3, True): F.conv_transpose3d,
}


def router_hidden(in_channels: int) -> int:
    """Hidden width of a layer's router: ``max(8, 2 * in_channels)`` (twice, as the reference)."""
    return max(8, 2 * in_channels)


class Router(nn.Module):
    """Pooled features -> E mixing weights that sum to one.

    Args:
        in_channels: channels of the routed layer's input. Example: ``16``.
        num_experts: E = K + 1. Example: ``4``.
        gate: ``"softmax"`` or ``"sigmoid"`` (normalised by its sum). Default ``"softmax"``.
    """

    def __init__(self, in_channels: int, num_experts: int, gate: Gate = "softmax") -> None:
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        self.gate = gate
        self.fc1 = nn.Linear(in_channels, router_hidden(in_channels))
        self.fc2 = nn.Linear(router_hidden(in_channels), num_experts)
        # Zero logits: the uniform mix 1/E under either gate; gradients still reach fc2 at once.
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C)`` pooled features to ``(B, E)`` mixing weights."""
        logits = self.fc2(F.relu(self.fc1(pooled)))
        if self.gate == "softmax":
            return torch.softmax(logits, dim=1)
        gates = torch.sigmoid(logits)
        return gates / gates.sum(dim=1, keepdim=True)


class RoutedConv(nn.Module):
    """A ``Conv{2,3}d`` or ``ConvTranspose{2,3}d`` whose kernel is a per-sample mix of experts.

    Expert kernels and biases are buffers (frozen, saved in the state dict), stacked on a new
    leading axis: ``expert_weight`` is ``(E, *conv.weight.shape)``, ``expert_bias`` ``(E, out)``.

    Args:
        conv: the layer to replace; stride, padding, dilation, groups and output padding are
            copied, its weights are not. Example: ``nn.Conv2d(4, 8, 3, padding=1)``.
        num_experts: E = K + 1. Example: ``3``.
        gate: see ``Router``. Default ``"softmax"``.
    """

    expert_weight: torch.Tensor
    expert_bias: torch.Tensor

    def __init__(self, conv: nn.Module, num_experts: int, gate: Gate = "softmax") -> None:
        super().__init__()
        if not isinstance(conv, nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d | nn.ConvTranspose3d):
            raise TypeError(
                f"expected a Conv2d/3d or ConvTranspose2d/3d, got {type(conv).__name__}"
            )
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"only explicit zero padding is routed, got {conv.padding!r}")
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        self.transposed = isinstance(conv, nn.ConvTranspose2d | nn.ConvTranspose3d)
        self.spatial_dims = conv.weight.dim() - 2
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.stride = tuple(conv.stride)
        self.padding = tuple(conv.padding)
        self.dilation = tuple(conv.dilation)
        self.groups = conv.groups
        self.output_padding = tuple(conv.output_padding)
        self.num_experts = num_experts
        shape = (num_experts, *conv.weight.shape)
        self.register_buffer("expert_weight", torch.zeros(shape, dtype=conv.weight.dtype))
        self.has_bias = conv.bias is not None
        bias_shape = (num_experts, self.out_channels) if self.has_bias else (0,)
        self.register_buffer("expert_bias", torch.zeros(bias_shape, dtype=conv.weight.dtype))
        self.router = Router(self.in_channels, num_experts, gate)
        self.last_mix: torch.Tensor | None = None
        # The same mix with its graph, for the adaptation's anchor term (not saved).
        self.live_mix: torch.Tensor | None = None

    def set_experts(self, weights: torch.Tensor, biases: torch.Tensor | None) -> None:
        """Copy stacked expert kernels ``(E, *w)`` and biases ``(E, out)`` into the buffers."""
        if tuple(weights.shape) != tuple(self.expert_weight.shape):
            raise ValueError(
                f"expected expert kernels {tuple(self.expert_weight.shape)}, got {tuple(weights.shape)}"
            )
        self.expert_weight.copy_(weights)
        if self.has_bias:
            if biases is None or tuple(biases.shape) != tuple(self.expert_bias.shape):
                got = None if biases is None else tuple(biases.shape)
                raise ValueError(
                    f"expected expert biases {tuple(self.expert_bias.shape)}, got {got}"
                )
            self.expert_bias.copy_(biases)

    def mixing_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(B, E)`` mix this layer applies to input ``x`` of shape ``(B, C, *spatial)``."""
        pooled = x.mean(dim=tuple(range(2, x.dim())))
        return self.router(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve each sample with its own mixed kernel, in one grouped convolution."""
        b = x.shape[0]
        mix = self.mixing_weights(x)
        self.last_mix = mix.detach()
        self.live_mix = mix if mix.requires_grad else None
        kernel = (mix @ self.expert_weight.flatten(1)).reshape(
            b * self.expert_weight.shape[1], *self.expert_weight.shape[2:]
        )
        bias = (mix @ self.expert_bias).reshape(-1) if self.has_bias else None
        # The batch becomes groups: sample i only meets kernel i.
        grouped = x.reshape(1, b * x.shape[1], *x.shape[2:])
        fn = _CONV_FN[(self.spatial_dims, self.transposed)]
        extra = {"output_padding": self.output_padding} if self.transposed else {}
        out = fn(
            grouped,
            kernel,
            bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=b * self.groups,
            **extra,
        )
        return out.reshape(b, self.out_channels, *out.shape[2:])

    def extra_repr(self) -> str:
        kind = "ConvTranspose" if self.transposed else "Conv"
        return (
            f"{kind}{self.spatial_dims}d({self.in_channels}, {self.out_channels}, "
            f"experts={self.num_experts}, gate={self.router.gate}, stride={self.stride})"
        )
