"""The routed U-Net: the spec's MONAI U-Net with every convolution routed over K+1 experts.

Every ``Conv{2,3}d`` and ``ConvTranspose{2,3}d`` (encoder, decoder, residual paths and the
bottleneck) becomes a ``RoutedConv`` holding all E = K + 1 expert kernels. Everything else
(norm layers with their running statistics, PReLU slopes) is taken from the global model
(expert 0). Trainable at test time: the routers and the norm layers' affine parameters.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from data_specs.task_spec import TaskSpec, build_unet, expected_tensors
from personalization.outside.errors import RoutingError
from personalization.outside.layers import GATES, Gate, RoutedConv

if TYPE_CHECKING:
    from data_specs.weights.routing_bundle import RoutingBundle

ROUTABLE = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
NORMS = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    # np.ascontiguousarray would turn 0-d buffers (num_batches_tracked) into shape [1].
    array = np.asarray(value)
    return torch.from_numpy(array if array.flags.c_contiguous else array.copy(order="C"))


def _finite(t: torch.Tensor) -> bool:
    return not t.is_floating_point() or bool(t.isfinite().all())


class RoutedUNet(nn.Module):
    """The spec's U-Net with routed convolutions; call ``load_experts`` before use.

    Most callers want ``build_routed_model``; this constructor gives the bare structure (expert
    buffers zero), which ``load_routed`` fills from a file.

    Args:
        spec: the task spec. Example: ``TaskSpec(channels=(8, 16, 32), strides=(2, 2))``.
        num_experts: E = K + 1, the global model plus K personal models. Example: ``4``.
        gate: ``"softmax"`` or ``"sigmoid"`` (normalised); see ``layers``. Default ``"softmax"``.
        seed: seed of the routers' first-layer initialisation (the global RNG is left as it
            was). Default ``0``.
    """

    def __init__(
        self, spec: TaskSpec, num_experts: int, gate: Gate = "softmax", seed: int = 0
    ) -> None:
        super().__init__()
        if gate not in GATES:
            raise RoutingError(f"gate must be one of {GATES}, got {gate!r}")
        if num_experts < 1:
            raise RoutingError(
                f"a routed model needs at least the global model, got {num_experts} experts"
            )
        self.spec = spec
        self.num_experts = num_experts
        self.gate: Gate = gate
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.unet = build_unet(spec)
            targets = [(n, m) for n, m in self.unet.named_modules() if isinstance(m, ROUTABLE)]
            for name, conv in targets:
                parent_name, _, child = name.rpartition(".")
                parent = self.unet.get_submodule(parent_name) if parent_name else self.unet
                setattr(parent, child, RoutedConv(conv, num_experts, gate))
        # Only routers and norm affine parameters may move (PReLU stays the global model's).
        for p in self.unet.parameters():
            p.requires_grad_(False)
        for p in self.adaptable_parameters():
            p.requires_grad_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, *spatial)`` of the routed network."""
        return self.unet(x)

    def routed_layers(self) -> dict[str, RoutedConv]:
        """Every routed layer by its U-Net module name (``model.0.conv.unit0.conv``, ...)."""
        return {n: m for n, m in self.unet.named_modules() if isinstance(m, RoutedConv)}

    def norm_layers(self) -> dict[str, nn.Module]:
        """Every normalisation layer by its U-Net module name."""
        return {n: m for n, m in self.unet.named_modules() if isinstance(m, NORMS)}

    def _adaptable_named(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, layer in self.routed_layers().items():
            for pname, p in layer.router.named_parameters():
                yield f"{name}.router.{pname}", p
        for name, norm in self.norm_layers().items():
            for pname, p in norm.named_parameters(recurse=False):
                yield f"{name}.{pname}", p

    def router_parameters(self) -> list[nn.Parameter]:
        """Parameters of every router."""
        return [p for layer in self.routed_layers().values() for p in layer.router.parameters()]

    def adaptable_parameters(self) -> list[nn.Parameter]:
        """What test-time adaptation optimises: routers and norm affine parameters."""
        return [p for _, p in self._adaptable_named()]

    def load_experts(self, experts: Sequence[Mapping[str, Any]]) -> None:
        """Fill expert kernels from E state dicts and everything else from expert 0.

        Args:
            experts: E state dicts of the plain U-Net (torch tensors or numpy arrays), expert 0
                the global model. Example: ``bundle.experts``.

        Raises:
            RoutingError: wrong number of experts, or an expert that does not match the spec
                or holds NaN/Inf.
        """
        if len(experts) != self.num_experts:
            raise RoutingError(f"expected {self.num_experts} experts, got {len(experts)}")
        expected = expected_tensors(self.spec)
        for i, state in enumerate(experts):
            missing = [k for k in expected if k not in state]
            unknown = [k for k in state if k not in expected]
            bad = [
                k
                for k, (shape, _) in expected.items()
                if k in state and tuple(state[k].shape) != shape
            ]
            if missing or unknown or bad:
                raise RoutingError(
                    f"expert {i} does not match the task spec: missing {missing[:5]}, "
                    f"unknown {unknown[:5]}, shape mismatch {bad[:5]}"
                )
            nonfinite = [k for k, v in state.items() if not _finite(_as_tensor(v))]
            if nonfinite:
                raise RoutingError(f"expert {i} holds NaN or Inf in {nonfinite[:5]}")
        routed = self.routed_layers()
        with torch.no_grad():
            for name, layer in routed.items():
                weights = torch.stack([_as_tensor(e[f"{name}.weight"]) for e in experts])
                biases = None
                if layer.has_bias:
                    biases = torch.stack([_as_tensor(e[f"{name}.bias"]) for e in experts])
                layer.set_experts(
                    weights.to(layer.expert_weight),
                    None if biases is None else biases.to(layer.expert_bias),
                )
            conv_keys = {f"{n}.{s}" for n in routed for s in ("weight", "bias")}
            rest = {k: _as_tensor(v) for k, v in experts[0].items() if k not in conv_keys}
            own = self.unet.state_dict()
            for key, value in rest.items():
                own[key].copy_(value)

    def export(self) -> dict[str, torch.Tensor]:
        """The full state to save: expert buffers, routers, norms (detached, contiguous, CPU)."""
        return {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}

    def mean_mix(self) -> dict[str, list[float]]:
        """Per routed layer, the mixing weights of the last forward pass averaged over the batch."""
        return {
            name: [round(float(x), 6) for x in layer.last_mix.mean(dim=0)]
            for name, layer in self.routed_layers().items()
            if layer.last_mix is not None
        }

    @classmethod
    def from_bundle(
        cls, bundle: RoutingBundle, gate: Gate = "softmax", seed: int = 0
    ) -> RoutedUNet:
        """Build from a decoded routing bundle (see ``build_routed_model``)."""
        return build_routed_model(bundle.spec, bundle.experts, gate=gate, seed=seed)


def build_routed_model(
    spec: TaskSpec,
    experts: Sequence[Mapping[str, Any]],
    gate: Gate = "softmax",
    *,
    seed: int = 0,
) -> RoutedUNet:
    """Build a routed U-Net over the global model and K personal models.

    Args:
        spec: the task spec every expert matches. Example: ``bundle.spec``.
        experts: K + 1 plain U-Net state dicts (torch or numpy), expert 0 the global model.
            Example: ``bundle.experts``.
        gate: ``"softmax"`` (default) or ``"sigmoid"`` normalised by its sum.
        seed: seed of the routers' first-layer initialisation. Default ``0``.

    Returns:
        The routed model in eval mode, routers at the uniform mix 1/E.

    Raises:
        RoutingError: no experts, an unknown gate, or experts that do not match the spec.
    """
    model = RoutedUNet(spec, len(experts), gate=gate, seed=seed)
    model.load_experts(experts)
    return model.eval()
