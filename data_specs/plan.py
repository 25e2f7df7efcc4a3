"""The federation's plan: sites' fingerprints in, a ``TaskSpec`` and batch size out (pure, deterministic).

As nnU-Net plans one dataset, ``make_plan`` plans a federation from its sites' aggregate
fingerprints (``data_specs.manifests.fingerprint``); the aggregator runs it when an experiment asks for
``plan: "auto"``, and a site can run it too. The same fingerprints in any order give the same
plan: they are sorted by their canonical JSON before any arithmetic.

Rules (nnU-Net's, adapted to what ``TaskSpec`` can express):

- target spacing: per axis, the median of the sites' median spacings; for 3D, an axis more
  than 3x coarser than the finest (with few voxels along it) takes the median of the sites'
  10th-percentile spacing instead, but never finer than the other axes;
- patch: the median field of view (sites' median shape x median spacing) at the target
  spacing (2D: the in-plane slice), capped at
  ``max_patch`` and shrunk (largest axis first) until ``min_batch`` patches fit the voxel
  budget, then rounded to the network's total stride;
- network: one stride-2 pooling per level while every patch axis stays at least
  ``min_feature_size`` voxels (at most ``max_poolings``); features double per level from
  ``base_channels`` up to ``max_channels``;
- batch size: as many patches as the budget holds, at most 5 % of the federation's voxels;
- normalisation: CT (every site's every channel CT) clips at the federation's 0.5 / 99.5
  foreground percentiles (the mixture of the sites' distributions, weighted by foreground
  voxels), then z-scores with the pooled foreground mean and sd; anything else z-scores each
  image.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from data_specs.constants import InputFit
from data_specs.errors import DataSpecError
from data_specs.manifests.fingerprint import INTENSITY_LEVELS, DatasetFingerprint, ModalityKind
from data_specs.task_spec import TaskSpec

PLAN_VERSION: Literal[1] = 1
_DATASET_SHARE = 0.05  # nnU-Net: a batch covers at most 5 % of the dataset's voxels


class PlanError(DataSpecError):
    """Fingerprints that cannot be planned together (dims, channels, classes or modality differ)."""


class PlanOptions(BaseModel):
    """Knobs of ``make_plan``; the defaults suit a CPU site or a small GPU.

    Args:
        budget_voxels_2d: voxels of one 2D batch (patch area x batch size). Default 16 x 128².
        budget_voxels_3d: voxels of one 3D batch. Default 2 x 96³.
        max_patch_2d: largest 2D patch side. Default 512.
        max_patch_3d: largest 3D patch side. Default 192.
        min_batch: smallest batch size. Default 2.
        max_batch: largest batch size. Default 64.
        base_channels: features of the first level. Default 16.
        max_channels: features of the deepest levels. Default 256.
        min_feature_size: smallest feature map side at the bottom. Default 4.
        max_poolings: most stride-2 levels. Default 5.
        anisotropy_threshold: spacing ratio that counts as anisotropic (3D). Default 3.
        fit_2d: ``patch`` (resample to the target spacing, random patches) or ``resize``
            (whole slice resized to the patch). Default ``patch``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    budget_voxels_2d: Annotated[int, Field(ge=4096)] = 16 * 128 * 128
    budget_voxels_3d: Annotated[int, Field(ge=32768)] = 2 * 96**3
    max_patch_2d: Annotated[int, Field(ge=16, le=2048)] = 512
    max_patch_3d: Annotated[int, Field(ge=16, le=512)] = 192
    min_batch: Annotated[int, Field(ge=1, le=64)] = 2
    max_batch: Annotated[int, Field(ge=1, le=1024)] = 64
    base_channels: Annotated[int, Field(ge=4, le=128)] = 16
    max_channels: Annotated[int, Field(ge=8, le=1024)] = 256
    min_feature_size: Annotated[int, Field(ge=2, le=16)] = 4
    max_poolings: Annotated[int, Field(ge=1, le=7)] = 5
    anisotropy_threshold: Annotated[float, Field(gt=1.0)] = 3.0
    fit_2d: InputFit = InputFit.PATCH


class ExperimentPlan(BaseModel):
    """The plan of an experiment: the spec and batch size, and the federation figures behind them.

    Args:
        spec: the planned task spec (the researcher's spec with the planned fields).
        batch_size: the planned ``TrainConfig.batch_size``.
        target_spacing: planned voxel spacing, one per network axis (mm).
        median_shape: the federation's median scan shape at the target spacing (scan axes).
        modality: ``ct``, ``mri`` or ``other``.
        num_sites: fingerprints combined.
        num_cases: training cases across them.
        class_frequencies: the federation's share of voxels per class, background first.
        intensity_mean_sd: pooled foreground mean and sd per channel.
        intensity_range: the federation's 0.5 and 99.5 foreground percentiles per channel.
        fingerprints_sha256: digest of the combined fingerprints (sorted canonical JSON).
        notes: the decisions, in words.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = PLAN_VERSION
    spec: TaskSpec
    batch_size: int
    target_spacing: tuple[float, ...]
    median_shape: tuple[float, ...]
    modality: ModalityKind
    num_sites: int
    num_cases: int
    class_frequencies: tuple[float, ...]
    intensity_mean_sd: tuple[tuple[float, float], ...]
    intensity_range: tuple[tuple[float, float], ...]
    fingerprints_sha256: str
    notes: list[str] = Field(default_factory=list)


def canonical(fingerprints: Sequence[DatasetFingerprint]) -> list[DatasetFingerprint]:
    """The fingerprints sorted by their canonical JSON (the order every computation uses)."""
    return sorted(fingerprints, key=_json)


def _json(fp: DatasetFingerprint) -> str:
    return json.dumps(fp.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def combined_class_frequencies(fingerprints: Sequence[DatasetFingerprint]) -> list[float]:
    """The federation's share of voxels per class: sites weighted by their labelled voxels.

    Raises:
        PlanError: no fingerprint, or sites that disagree on the number of classes.
    """
    fps = canonical(fingerprints)
    _same(fps, "number of classes", lambda f: len(f.class_frequencies))
    total = sum(f.labelled_voxels for f in fps)
    freq = np.sum([np.asarray(f.class_frequencies) * f.labelled_voxels for f in fps], axis=0)
    freq = freq / total
    return [float(v) for v in freq]


def mixture_quantile(fingerprints: Sequence[DatasetFingerprint], channel: int, q: float) -> float:
    """A quantile of the federation's pooled foreground intensities of one channel.

    Each site's distribution is its percentile curve (linear between levels); the federation's
    is their mixture weighted by foreground voxels, inverted by bisection.

    Args:
        fingerprints: the sites' fingerprints.
        channel: channel index. Example: ``0``.
        q: quantile in [0, 1]. Example: ``0.005``.
    """
    fps = canonical(fingerprints)
    levels = np.asarray(INTENSITY_LEVELS) / 100.0
    curves = [np.asarray(f.channels[channel].percentiles) for f in fps]
    weights = np.asarray([f.foreground_voxels for f in fps], dtype=np.float64)
    weights /= weights.sum()

    def cdf(x: float) -> float:
        return float(
            sum(w * np.interp(x, c, levels, 0.0, 1.0) for w, c in zip(weights, curves, strict=True))
        )

    lo, hi = min(float(c[0]) for c in curves), max(float(c[-1]) for c in curves)
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
    return hi


def make_plan(
    fingerprints: Sequence[DatasetFingerprint],
    base: TaskSpec,
    options: PlanOptions | None = None,
) -> ExperimentPlan:
    """Plan a federation: target spacing, patch, network depth, normalisation and batch size.

    Args:
        fingerprints: one per participating site, in any order.
        base: the researcher's spec; its dims, channels, classes, norm, residual units and
            dropout stay, the planned fields are replaced. Example: ``TaskSpec(out_channels=4)``.
        options: budget and network knobs. Default ``PlanOptions()``.

    Returns:
        The plan; ``plan.spec`` validates as a ``TaskSpec``.

    Raises:
        PlanError: no fingerprint, or ones that disagree with each other or with ``base``.
    """
    opts = options or PlanOptions()
    fps = canonical(fingerprints)
    if not fps:
        raise PlanError("expected at least one site fingerprint to plan from, found none")
    _check(fps, base)
    notes: list[str] = []
    dims = base.spatial_dims
    median_sp = np.median([f.level("spacing", 50.0) for f in fps], axis=0)
    p10_sp = np.median([f.level("spacing", 10.0) for f in fps], axis=0)
    # field of view (mm) per site: its median shape times its median spacing
    extent = np.median(
        [np.multiply(f.level("shape", 50.0), f.level("spacing", 50.0)) for f in fps], axis=0
    )
    target = median_sp.copy()
    if dims == 3:
        target = _anisotropic(target, p10_sp, extent, opts, notes)
    shape_t = extent / target
    net_axes = shape_t[:dims]  # a 2D task slices volumes along the last axis
    budget = opts.budget_voxels_2d if dims == 2 else opts.budget_voxels_3d
    cap = opts.max_patch_2d if dims == 2 else opts.max_patch_3d
    patch, poolings = _patch(net_axes, budget, cap, opts, notes)
    batch = _batch(fps, shape_t, dims, patch, budget, opts)
    modality, clip, mean_sd, ranges = _normalisation(fps, notes)
    fit = opts.fit_2d if dims == 2 else InputFit.PATCH
    spacing = tuple(round(float(s), 6) for s in target[:dims])
    update = {
        "channels": tuple(
            min(opts.base_channels * 2**i, opts.max_channels) for i in range(poolings + 1)
        ),
        "strides": (2,) * poolings,
        "patch_size": patch,
        "fit": fit,
        "target_spacing": None if fit == InputFit.RESIZE else spacing,
        "intensity": "ct" if clip is not None else "zscore",
        "clip_range": clip,
        "norm_mean_std": mean_sd[0] if clip is not None else None,
    }
    spec = TaskSpec.model_validate({**base.model_dump(), **update})
    notes.append(
        f"patch {patch} with {poolings} pooling(s), batch {batch} "
        f"({math.prod(patch) * batch} voxels of a {budget} budget)"
    )
    digest = hashlib.sha256(json.dumps([_json(f) for f in fps]).encode()).hexdigest()
    return ExperimentPlan(
        spec=spec,
        batch_size=batch,
        target_spacing=spacing,
        median_shape=tuple(round(float(s), 3) for s in shape_t),
        modality=modality,
        num_sites=len(fps),
        num_cases=sum(f.num_cases for f in fps),
        class_frequencies=tuple(combined_class_frequencies(fps)),
        intensity_mean_sd=mean_sd,
        intensity_range=ranges,
        fingerprints_sha256=digest,
        notes=notes,
    )


def _same(fps: Sequence[DatasetFingerprint], what: str, key: object) -> None:
    values = sorted({key(f) for f in fps})  # type: ignore[operator]
    if not fps:
        raise PlanError("expected at least one site fingerprint, found none")
    if len(values) > 1:
        raise PlanError(f"sites disagree on the {what}: {values}")


def _check(fps: Sequence[DatasetFingerprint], base: TaskSpec) -> None:
    _same(fps, "task dims", lambda f: f.spatial_dims)
    _same(fps, "scan dims", lambda f: f.scan_dims)
    _same(fps, "number of channels", lambda f: len(f.channels))
    _same(fps, "number of classes", lambda f: len(f.class_frequencies))
    first = fps[0]
    wrong = [
        f"{name}: spec {want}, sites {have}"
        for name, have, want in (
            ("spatial_dims", first.spatial_dims, base.spatial_dims),
            ("in_channels", len(first.channels), base.in_channels),
            ("out_channels", len(first.class_frequencies), base.out_channels),
        )
        if have != want
    ]
    if wrong:
        raise PlanError("the spec does not fit the sites' data: " + "; ".join(wrong))


def _anisotropic(
    target: np.ndarray, p10: np.ndarray, extent: np.ndarray, opts: PlanOptions, notes: list[str]
) -> np.ndarray:
    worst = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != worst]
    size = extent / target
    aniso_spacing = target[worst] / min(target[others]) > opts.anisotropy_threshold
    aniso_voxels = size[worst] * opts.anisotropy_threshold < min(size[others])
    if not (aniso_spacing and aniso_voxels):
        return target
    out = target.copy()
    out[worst] = max(float(p10[worst]), float(max(target[others])) + 1e-5)
    notes.append(f"anisotropic axis {worst}: spacing {target[worst]:.3g} -> {out[worst]:.3g}")
    return out


def _patch(
    shape: np.ndarray, budget: int, cap: int, opts: PlanOptions, notes: list[str]
) -> tuple[tuple[int, ...], int]:
    patch = np.minimum(np.maximum(shape, opts.min_feature_size * 2), cap).astype(np.float64)
    while math.prod(patch) * opts.min_batch > budget:
        patch[int(np.argmax(patch))] *= 0.9
    if np.any(patch < shape):
        notes.append(
            f"median shape {tuple(round(float(s)) for s in shape)} capped (largest patch side or voxel budget)"
        )
    ratio = float(min(patch)) / opts.min_feature_size
    poolings = int(min(opts.max_poolings, max(1, math.floor(math.log2(max(ratio, 1.0))))))
    unit = 2**poolings
    rounded = [max(unit, round(p / unit) * unit) for p in patch]
    for axis in np.argsort(-np.asarray(rounded), kind="stable"):
        if math.prod(rounded) * opts.min_batch <= budget:
            break
        rounded[axis] = max(unit, math.floor(patch[axis] / unit) * unit)
    return tuple(int(p) for p in rounded), poolings


def _batch(
    fps: Sequence[DatasetFingerprint],
    shape_t: np.ndarray,
    dims: int,
    patch: tuple[int, ...],
    budget: int,
    opts: PlanOptions,
) -> int:
    per_item = float(np.prod(shape_t[:dims]))
    items = sum(f.num_cases for f in fps) * float(np.prod(shape_t[dims:]) if dims == 2 else 1.0)
    by_budget = budget // math.prod(patch)
    by_data = math.floor(_DATASET_SHARE * items * per_item / math.prod(patch))
    return int(max(opts.min_batch, min(by_budget, by_data, opts.max_batch)))


def _normalisation(
    fps: Sequence[DatasetFingerprint], notes: list[str]
) -> tuple[
    ModalityKind,
    tuple[float, float] | None,
    tuple[tuple[float, float], ...],
    tuple[tuple[float, float], ...],
]:
    kinds = sorted({f.modality for f in fps})
    if len(kinds) > 1 and ModalityKind.CT in kinds:
        raise PlanError(f"sites disagree on the modality (CT and not CT): {kinds}")
    modality = kinds[0]
    n_ch = len(fps[0].channels)
    weights = np.asarray([f.foreground_voxels for f in fps], dtype=np.float64)
    mean_sd, ranges = [], []
    for c in range(n_ch):
        means = np.asarray([f.channels[c].mean for f in fps])
        sds = np.asarray([f.channels[c].sd for f in fps])
        mean = float(np.sum(weights * means) / weights.sum())
        var = float(np.sum(weights * (sds**2 + means**2)) / weights.sum()) - mean**2
        mean_sd.append((round(mean, 6), round(max(math.sqrt(max(var, 0.0)), 1e-6), 6)))
        lo, hi = mixture_quantile(fps, c, 0.005), mixture_quantile(fps, c, 0.995)
        ranges.append((round(lo, 6), round(hi, 6)))
    clip = None
    if modality == ModalityKind.CT:
        clip = ranges[0]
        notes.append(f"CT: clip to {clip}, then z-score with mean/sd {mean_sd[0]}")
        if n_ch > 1:
            notes.append("CT with several channels: channel 0's window and statistics apply")
    else:
        notes.append(f"{modality.value}: z-score each image")
    return modality, clip, tuple(mean_sd), tuple(ranges)
