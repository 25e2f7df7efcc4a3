"""The task's U-Net in plain torch, for inference without importing MONAI (about 2 s of CPU saved).

``build_plain_unet(spec)`` builds the same module tree as ``data_specs.task_spec.build_unet``
(MONAI's ``UNet``: ``Convolution`` / ``ResidualUnit`` blocks with norm, dropout and PReLU in
MONAI's ``NDA`` order, skip connections by concatenation), with the same parameter names and
the same torch operations in the same order, so a state dict loads strictly into either and
both give bit-identical outputs (``tests/site_agent/test_plain_unet.py`` compares them over the
spec's options). It exists only so ``fedseg site infer`` on a picture needs no MONAI import;
training and every other path keep MONAI's class.
"""

from __future__ import annotations

import torch
from torch import nn

from data_specs.constants import NormKind
from data_specs.task_spec import TaskSpec

_KERNEL = 3


def _conv(dims: int, transposed: bool = False) -> type[nn.Module]:
    if transposed:
        return nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
    return nn.Conv2d if dims == 2 else nn.Conv3d


def _adn(spec: TaskSpec, channels: int) -> nn.Sequential:
    """MONAI's ``ADN`` with ordering ``NDA``: norm, dropout, PReLU (children ``N``, ``D``, ``A``)."""
    dims = spec.spatial_dims
    adn = nn.Sequential()
    if spec.norm == NormKind.INSTANCE:
        instance = nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d
        adn.add_module("N", instance(channels, affine=True))
    else:
        adn.add_module("N", (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels))
    adn.add_module("D", nn.Dropout(spec.dropout))
    adn.add_module("A", nn.PReLU())
    return adn


def _convolution(
    spec: TaskSpec,
    cin: int,
    cout: int,
    stride: int,
    *,
    conv_only: bool = False,
    transposed: bool = False,
) -> nn.Sequential:
    """MONAI's ``Convolution``: child ``conv``, then ``adn`` unless ``conv_only``."""
    block = nn.Sequential()
    conv_type = _conv(spec.spatial_dims, transposed)
    if transposed:
        conv = conv_type(
            cin, cout, _KERNEL, stride=stride, padding=1, output_padding=stride - 1, bias=True
        )
    else:
        conv = conv_type(cin, cout, _KERNEL, stride=stride, padding=1, bias=True)
    block.add_module("conv", conv)
    if not conv_only:
        block.add_module("adn", _adn(spec, cout))
    return block


class _ResidualUnit(nn.Module):
    """MONAI's ``ResidualUnit``: ``conv`` (``unit0..``) plus ``residual`` (identity or a conv)."""

    def __init__(
        self,
        spec: TaskSpec,
        cin: int,
        cout: int,
        stride: int,
        subunits: int,
        last_conv_only: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Sequential()
        channels, step = cin, stride
        for su in range(max(1, subunits)):
            unit = _convolution(
                spec, channels, cout, step, conv_only=last_conv_only and su == max(1, subunits) - 1
            )
            self.conv.add_module(f"unit{su:d}", unit)
            channels, step = cout, 1
        self.residual: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            kernel, padding = (_KERNEL, 1) if stride != 1 else (1, 0)
            self.residual = _conv(spec.spatial_dims)(cin, cout, kernel, stride, padding, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.residual(x)
        cx = self.conv(x)
        return cx + res


class _Skip(nn.Module):
    """MONAI's ``SkipConnection`` in ``cat`` mode (child ``submodule``)."""

    def __init__(self, submodule: nn.Module) -> None:
        super().__init__()
        self.submodule = submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.submodule(x)
        return torch.cat([x, y], dim=1)


class PlainUNet(nn.Module):
    """MONAI's ``UNet`` of a task spec, module for module (child ``model``)."""

    def __init__(self, spec: TaskSpec) -> None:
        super().__init__()
        self.spec = spec
        self.model = self._block(
            spec.in_channels, spec.out_channels, spec.channels, spec.strides, True
        )

    def _down(self, cin: int, cout: int, stride: int) -> nn.Module:
        if self.spec.num_res_units > 0:
            return _ResidualUnit(self.spec, cin, cout, stride, self.spec.num_res_units)
        return _convolution(self.spec, cin, cout, stride)

    def _up(self, cin: int, cout: int, stride: int, is_top: bool) -> nn.Module:
        res = self.spec.num_res_units
        conv = _convolution(
            self.spec, cin, cout, stride, conv_only=is_top and res == 0, transposed=True
        )
        if res > 0:
            unit = _ResidualUnit(self.spec, cout, cout, 1, 1, last_conv_only=is_top)
            return nn.Sequential(conv, unit)
        return conv

    def _block(
        self,
        cin: int,
        cout: int,
        channels: tuple[int, ...],
        strides: tuple[int, ...],
        is_top: bool,
    ) -> nn.Module:
        c, s = channels[0], strides[0]
        sub: nn.Module
        if len(channels) > 2:
            sub = self._block(c, c, channels[1:], strides[1:], False)
            upc = c * 2
        else:
            sub = self._down(c, channels[1], 1)  # the bottom layer
            upc = c + channels[1]
        down = self._down(cin, c, s)
        up = self._up(upc, cout, s, is_top)
        return nn.Sequential(down, _Skip(sub), up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out


def build_plain_unet(spec: TaskSpec) -> nn.Module:
    """The spec's U-Net without MONAI (same state-dict keys and outputs as ``build_unet``).

    Args:
        spec: the task spec. Example: ``TaskSpec(spatial_dims=2, out_channels=4)``.
    """
    return PlainUNet(spec)
