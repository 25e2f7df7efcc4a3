"""The MONAI U-Net's state-dict layout, parameter count and initial weights, by arithmetic.

``build_unet`` needs torch and MONAI; the aggregator needs only what the network *looks like*:
the names, shapes and dtypes every bundle must carry, which keys are normalisation layers (FedBN),
how many parameters a spec asks for (to refuse an oversized network before anything is built), and
a seeded initial model. This module mirrors ``monai.networks.nets.UNet`` (with the ``norm``,
``act=PReLU`` and ``kernel_size=3`` that ``build_unet`` passes) with numpy only; the tests check it
against ``build_unet`` for many specs.

Layout of ``UNet`` (MONAI 1.x): a block per level is ``Sequential(down, SkipConnection(sub), up)``
named ``<prefix>.0``, ``<prefix>.1.submodule`` and ``<prefix>.2``; the lowest level's ``sub`` is
the bottom layer (a stride-1 down layer). A down layer is a ``Convolution`` (no residual units) or
a ``ResidualUnit`` with ``num_res_units`` sub-units; an up layer is a transposed ``Convolution``,
followed by a one-unit ``ResidualUnit`` when ``num_res_units > 0``. The top up layer ends with a
bare convolution (no norm, no activation).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

from data_specs.constants import NormKind

if TYPE_CHECKING:
    from data_specs.task_spec import TaskSpec

KERNEL_SIZE = 3  # build_unet uses MONAI's default kernel_size and up_kernel_size
PRELU_INIT = 0.25  # torch.nn.PReLU's default initial slope


class Role(StrEnum):
    """What one state-dict entry is (decides whether it is a parameter and how it starts)."""

    CONV_WEIGHT = "conv_weight"
    CONV_BIAS = "conv_bias"
    NORM_WEIGHT = "norm_weight"
    NORM_BIAS = "norm_bias"
    RUNNING_MEAN = "running_mean"
    RUNNING_VAR = "running_var"
    NUM_BATCHES_TRACKED = "num_batches_tracked"
    PRELU = "prelu"


_BUFFERS = frozenset({Role.RUNNING_MEAN, Role.RUNNING_VAR, Role.NUM_BATCHES_TRACKED})
_NORM_ROLES = frozenset(
    {
        Role.NORM_WEIGHT,
        Role.NORM_BIAS,
        Role.RUNNING_MEAN,
        Role.RUNNING_VAR,
        Role.NUM_BATCHES_TRACKED,
    }
)


@dataclass(frozen=True)
class TensorSlot:
    """One state-dict entry of the U-Net.

    Attributes:
        name: state-dict key. Example: ``"model.0.conv.unit0.conv.weight"``.
        shape: tensor shape. Example: ``(8, 1, 3, 3)``.
        dtype: numpy dtype name: ``"float32"``, or ``"int64"`` for ``num_batches_tracked``.
        role: what the entry is.
        fan_in: the owning convolution's fan-in (for its default initialisation); 0 otherwise.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    role: Role
    fan_in: int = 0

    @property
    def is_parameter(self) -> bool:
        """True for trainable parameters, False for buffers (running statistics)."""
        return self.role not in _BUFFERS

    @property
    def is_norm(self) -> bool:
        """True for every entry of a BatchNorm / InstanceNorm layer (FedBN keeps these local)."""
        return self.role in _NORM_ROLES

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)


class _Builder:
    """Walks the U-Net in MONAI's construction order, appending one slot per state-dict entry."""

    def __init__(self, dims: int, norm: NormKind, num_res_units: int) -> None:
        self.dims = dims
        self.norm = norm
        self.nru = num_res_units
        self.slots: list[TensorSlot] = []

    def conv(
        self, prefix: str, cin: int, cout: int, *, transposed: bool = False, conv_only: bool = False
    ) -> None:
        """A MONAI ``Convolution``: ``conv`` then (unless ``conv_only``) ``adn.N`` and ``adn.A``."""
        kernel = (KERNEL_SIZE,) * self.dims
        shape = (cin, cout, *kernel) if transposed else (cout, cin, *kernel)
        self._conv_pair(f"{prefix}.conv", shape, cout)
        if conv_only:
            return
        n = f"{prefix}.adn.N"
        self._add(f"{n}.weight", (cout,), Role.NORM_WEIGHT)
        self._add(f"{n}.bias", (cout,), Role.NORM_BIAS)
        if self.norm == NormKind.BATCH:
            self._add(f"{n}.running_mean", (cout,), Role.RUNNING_MEAN)
            self._add(f"{n}.running_var", (cout,), Role.RUNNING_VAR)
            self.slots.append(
                TensorSlot(f"{n}.num_batches_tracked", (), "int64", Role.NUM_BATCHES_TRACKED)
            )
        self._add(f"{prefix}.adn.A.weight", (1,), Role.PRELU)

    def residual_unit(
        self, prefix: str, cin: int, cout: int, *, stride: int, subunits: int, last_conv_only: bool
    ) -> None:
        """A MONAI ``ResidualUnit``: ``conv.unit<i>`` then a ``residual`` conv when shapes change."""
        subunits = max(1, subunits)
        for su in range(subunits):
            self.conv(
                f"{prefix}.conv.unit{su}",
                cin if su == 0 else cout,
                cout,
                conv_only=last_conv_only and su == subunits - 1,
            )
        if stride != 1 or cin != cout:
            rkernel = KERNEL_SIZE if stride != 1 else 1  # a 1x1 conv when only channels change
            self._conv_pair(f"{prefix}.residual", (cout, cin, *((rkernel,) * self.dims)), cout)

    def down(self, prefix: str, cin: int, cout: int, stride: int) -> None:
        if self.nru > 0:
            self.residual_unit(
                prefix, cin, cout, stride=stride, subunits=self.nru, last_conv_only=False
            )
        else:
            self.conv(prefix, cin, cout)

    def up(self, prefix: str, cin: int, cout: int, is_top: bool) -> None:
        if self.nru > 0:
            self.conv(f"{prefix}.0", cin, cout, transposed=True)
            self.residual_unit(
                f"{prefix}.1", cout, cout, stride=1, subunits=1, last_conv_only=is_top
            )
        else:
            self.conv(prefix, cin, cout, transposed=True, conv_only=is_top)

    def unet(
        self, in_channels: int, out_channels: int, channels: Sequence[int], strides: Sequence[int]
    ) -> None:
        """The whole network, iteratively (no recursion, whatever the depth)."""
        # Construction order equals state-dict order: down, sub (recursively), up per level.
        prefix = "model"
        inc, outc = in_channels, out_channels
        ups: list[tuple[str, int, int, bool]] = []
        levels = len(channels)
        for level in range(levels - 1):
            c = channels[level]
            self.down(f"{prefix}.0", inc, c, strides[level])
            sub = f"{prefix}.1.submodule"
            if level < levels - 2:
                upc = 2 * c
            else:
                upc = c + channels[level + 1]
                self.down(sub, c, channels[level + 1], 1)  # the bottom layer
            ups.append((f"{prefix}.2", upc, outc, level == 0))
            prefix, inc, outc = sub, c, c
        for up_prefix, cin, cout, is_top in reversed(ups):
            self.up(up_prefix, cin, cout, is_top)

    def _conv_pair(self, prefix: str, shape: tuple[int, ...], cout: int) -> None:
        # torch's default init draws both from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), where fan_in is
        # weight.size(1) * kernel volume (out_channels for a transposed conv, as torch computes it).
        fan_in = math.prod(shape[1:])
        self._add(f"{prefix}.weight", shape, Role.CONV_WEIGHT, fan_in)
        self._add(f"{prefix}.bias", (cout,), Role.CONV_BIAS, fan_in)

    def _add(self, name: str, shape: tuple[int, ...], role: Role, fan_in: int = 0) -> None:
        self.slots.append(TensorSlot(name, shape, "float32", role, fan_in))


def unet_slots(spec: TaskSpec) -> list[TensorSlot]:
    """Every state-dict entry of the U-Net ``build_unet(spec)`` builds, in state-dict order.

    Args:
        spec: the task spec. Example: ``TaskSpec(channels=(8, 16, 32), strides=(2, 2))``.

    Returns:
        One ``TensorSlot`` per entry (parameters and buffers).
    """
    return layout_slots(
        spatial_dims=spec.spatial_dims,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        channels=spec.channels,
        strides=spec.strides,
        num_res_units=spec.num_res_units,
        norm=spec.norm,
    )


def layout_slots(
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    channels: Sequence[int],
    strides: Sequence[int],
    num_res_units: int,
    norm: NormKind,
) -> list[TensorSlot]:
    """``unet_slots`` from the raw fields (for validators that run before a spec exists).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: classes including background.
        channels: feature channels per level (at least 2 entries).
        strides: one fewer entries than ``channels``.
        num_res_units: residual units per block (0 means plain convolutions).
        norm: ``batch`` or ``instance`` (affine).

    Returns:
        One ``TensorSlot`` per state-dict entry, in state-dict order.
    """
    return list(
        _slots(
            spatial_dims,
            in_channels,
            out_channels,
            tuple(channels),
            tuple(strides),
            num_res_units,
            NormKind(norm),
        )
    )


@functools.lru_cache(maxsize=64)
def _slots(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    channels: tuple[int, ...],
    strides: tuple[int, ...],
    num_res_units: int,
    norm: NormKind,
) -> tuple[TensorSlot, ...]:
    """The layout of one set of fields, built once: every ``TaskSpec`` validation (each read of
    an experiment's stored configuration) asks for its parameter count."""
    builder = _Builder(spatial_dims, norm, num_res_units)
    builder.unet(in_channels, out_channels, list(channels), list(strides))
    return tuple(builder.slots)


def unet_layout(spec: TaskSpec) -> dict[str, tuple[tuple[int, ...], str]]:
    """Names, shapes and numpy dtype names of the U-Net's state dict, in state-dict order.

    Args:
        spec: the task spec.

    Returns:
        ``{name: (shape, dtype)}``, e.g. ``{"model.0.conv.unit0.conv.weight": ((8, 1, 3, 3),
        "float32"), ...}``.
    """
    return {s.name: (s.shape, s.dtype) for s in unet_slots(spec)}


def parameter_count(spec: TaskSpec) -> int:
    """Number of trainable parameters (``sum(p.numel() for p in model.parameters())``)."""
    return sum(s.numel for s in unet_slots(spec) if s.is_parameter)


def norm_keys_of(spec: TaskSpec) -> tuple[str, ...]:
    """State-dict keys of every normalisation layer (affine parameters and running statistics)."""
    return tuple(s.name for s in unet_slots(spec) if s.is_norm)


def statistic_keys_of(spec: TaskSpec) -> tuple[str, ...]:
    """State-dict keys of the norm layers' running statistics (``running_mean``, ``running_var``,
    ``num_batches_tracked``): buffers estimated from the data, not trained by gradients."""
    return tuple(s.name for s in unet_slots(spec) if s.role in _BUFFERS)


def initial_weights(spec: TaskSpec, seed: int) -> dict[str, np.ndarray]:
    """Freshly initialised U-Net weights, reproducible from ``seed``, without torch.

    Draws from the same distributions as torch's defaults (convolution weights and biases
    uniform in ``±1/sqrt(fan_in)``, norm weights 1 and biases 0, running mean 0 and variance 1,
    PReLU slope 0.25); the numbers differ from a torch-seeded ``build_unet``.

    Args:
        spec: the task spec.
        seed: the experiment seed. Example: ``0``.

    Returns:
        ``{name: array}`` in state-dict order (float32; ``num_batches_tracked`` int64).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for slot in unet_slots(spec):
        if slot.role in (Role.CONV_WEIGHT, Role.CONV_BIAS):
            bound = 1.0 / math.sqrt(slot.fan_in) if slot.fan_in else 0.0
            value = rng.uniform(-bound, bound, size=slot.shape).astype(np.float32)
        elif slot.role in (Role.NORM_WEIGHT, Role.RUNNING_VAR):
            value = np.ones(slot.shape, dtype=np.float32)
        elif slot.role == Role.PRELU:
            value = np.full(slot.shape, PRELU_INIT, dtype=np.float32)
        else:
            value = np.zeros(slot.shape, dtype=np.dtype(slot.dtype))
        out[slot.name] = value
    return out
