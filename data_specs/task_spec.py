"""The task and model spec: one place that builds the MONAI U-Net, with a stable hash."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from data_specs.constants import InputFit, NormKind
from data_specs.weights.unet_layout import parameter_count

MAX_CHANNELS = 1024  # feature channels per level
MAX_DEPTH = 8  # down-sampling levels (entries of strides)
MAX_STRIDE = 8
MAX_PATCH = 2048  # voxels per patch side
MAX_PARAMETERS = 500_000_000  # hard ceiling; the aggregator's max_model_parameters is lower

if TYPE_CHECKING:
    import torch


class TaskSpec(BaseModel):
    """What a federation segments and with which network.

    Args:
        spatial_dims: 2 or 3. Default 2. Example: ``3``.
        in_channels: image channels. Default 1.
        out_channels: number of classes including background. Example: ``4``.
        channels: feature channels per level, each 1-1024, 2-9 levels. Default ``(8, 16, 32)``.
        strides: down-sampling strides between levels (each 1-8), one fewer than ``channels``.
        num_res_units: residual units per block. Default 1.
        norm: ``batch`` or ``instance``. Default ``batch``.
        dropout: dropout probability. Default 0.
        patch_size: spatial size the loader crops or pads to, each side 1-2048 and divisible by
            the product of ``strides``. Example: ``(32, 32)``. The network's parameter count
            (computed by arithmetic) must stay under ``MAX_PARAMETERS``.
        intensity: ``minmax`` (scale to [0, 1]), ``zscore`` (per image), ``none`` (values as
            stored) or ``ct`` (clip to ``clip_range``, then z-score with ``norm_mean_std``, the
            federation's statistics). Default ``zscore``.
        fit: ``patch`` (random patches, sliding-window inference) or ``resize`` (whole slice
            or volume resized to ``patch_size`` and predictions resized back). Default ``patch``.
        target_spacing: voxel spacing to resample to (in-plane for a 2D task); overrides the
            manifest's. Default None (the manifest's, or none).
        clip_range: intensity window for ``intensity="ct"``. Example: ``(-1000.0, 400.0)``.
        norm_mean_std: mean and sd for ``intensity="ct"``. Example: ``(40.0, 120.0)``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    spatial_dims: Literal[2, 3] = 2
    in_channels: Annotated[int, Field(ge=1, le=16)] = 1
    out_channels: Annotated[int, Field(ge=2, le=64)] = 2
    channels: Annotated[
        tuple[Annotated[int, Field(ge=1, le=MAX_CHANNELS)], ...],
        Field(min_length=2, max_length=MAX_DEPTH + 1),
    ] = (8, 16, 32)
    strides: Annotated[
        tuple[Annotated[int, Field(ge=1, le=MAX_STRIDE)], ...], Field(max_length=MAX_DEPTH)
    ] = (2, 2)
    num_res_units: Annotated[int, Field(ge=0, le=4)] = 1
    norm: NormKind = NormKind.BATCH
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    patch_size: Annotated[
        tuple[Annotated[int, Field(ge=1, le=MAX_PATCH)], ...], Field(min_length=2, max_length=3)
    ] = (32, 32)
    intensity: Literal["minmax", "zscore", "none", "ct"] = "zscore"
    fit: InputFit = InputFit.PATCH
    target_spacing: (
        Annotated[tuple[Annotated[float, Field(gt=0.0, le=1000.0)], ...], Field(max_length=3)]
        | None
    ) = None
    clip_range: tuple[float, float] | None = None
    norm_mean_std: tuple[float, Annotated[float, Field(gt=0.0)]] | None = None

    @model_validator(mode="after")
    def _check_shapes(self) -> TaskSpec:
        if len(self.channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {self.channels}")
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"strides needs {len(self.channels) - 1} entries for channels {self.channels}, "
                f"got {self.strides}"
            )
        if len(self.patch_size) != self.spatial_dims:
            raise ValueError(
                f"patch_size needs {self.spatial_dims} entries for spatial_dims={self.spatial_dims}, "
                f"got {self.patch_size}"
            )
        if self.target_spacing is not None and len(self.target_spacing) not in (2, 3):
            raise ValueError(f"target_spacing needs 2 or 3 entries, got {self.target_spacing}")
        if self.intensity == "ct" and (self.clip_range is None or self.norm_mean_std is None):
            raise ValueError("intensity='ct' needs clip_range and norm_mean_std")
        factor = 1
        for s in self.strides:
            factor *= s
        if any(p % factor for p in self.patch_size):
            raise ValueError(
                f"patch_size {self.patch_size} must be divisible by the total stride {factor}"
            )
        params = parameter_count(self)  # arithmetic: nothing is built
        if params > MAX_PARAMETERS:
            raise ValueError(
                f"the network has {params} parameters, more than the limit of {MAX_PARAMETERS}"
            )
        return self

    def spec_hash(self) -> str:
        """Stable sha256 (hex, 16 chars) of the canonical JSON of this spec."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def build_unet(spec: TaskSpec) -> torch.nn.Module:
    """Build the MONAI ``UNet`` a spec describes.

    Args:
        spec: the task spec. Example: ``TaskSpec(spatial_dims=2, out_channels=4)``.

    Returns:
        A freshly initialised ``monai.networks.nets.UNet``.
    """
    from monai.networks.nets import UNet

    norm: str | tuple[str, dict[str, bool]]
    # Instance norm with affine parameters, so FedBN and routing have something to keep or adapt.
    norm = ("instance", {"affine": True}) if spec.norm == NormKind.INSTANCE else "batch"
    return UNet(
        spatial_dims=spec.spatial_dims,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        channels=spec.channels,
        strides=spec.strides,
        num_res_units=spec.num_res_units,
        norm=norm,
        dropout=spec.dropout,
    )


def expected_tensors(spec: TaskSpec) -> dict[str, tuple[tuple[int, ...], str]]:
    """Names, shapes and dtypes of the model's state dict (what every full bundle must carry).

    Args:
        spec: the task spec.

    Returns:
        ``{name: (shape, numpy dtype name)}`` in state-dict order, computed by arithmetic
        (``data_specs.weights.unet_layout``): no torch, no MONAI.
    """
    from data_specs.weights.unet_layout import unet_layout

    return unet_layout(spec)
