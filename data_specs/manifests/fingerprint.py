"""A site's dataset fingerprint: aggregate statistics of its training cases, safe to send away.

The fingerprint is what nnU-Net's planner reads (spacing, shape, foreground intensities, class
frequencies), computed so that nothing per case leaves the site:

- the schema forbids extra fields, lists are fixed-length per level/axis/class (no per-case
  lists), and no string but an enum crosses (no file, case, site or dataset name);
- spacing and shape percentiles are *window means*: each reported figure is the mean of
  ``min(5, n)`` neighbouring order statistics around the percentile's rank, so every figure
  averages at least five cases (all of them when there are fewer), never one case's value;
- intensity percentiles come from one pool of foreground voxels sampled from every case (at
  most 10,000 per case and channel, seeded), mean and sd from exact sums over all foreground
  voxels: voxel statistics of the pooled site, never per-case figures;
- a site with fewer than ``MIN_CASES`` training cases computes no fingerprint at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Literal

if TYPE_CHECKING:
    import numpy as np

    from data_specs.imaging.imageio import ImageData
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from data_specs.constants import SplitName
from data_specs.errors import DataSpecError
from data_specs.manifests.manifest import DatasetManifest

FINGERPRINT_VERSION: Literal[1] = 1
MIN_CASES = 2
WINDOW_CASES = 5
SAMPLES_PER_CASE = 10_000
GEOMETRY_LEVELS: tuple[float, ...] = (10.0, 50.0, 90.0)
INTENSITY_LEVELS: tuple[float, ...] = (
    0.5,
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    75.0,
    90.0,
    95.0,
    99.0,
    99.5,
)

_Strict = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
_Pos = Annotated[float, Field(gt=0.0)]


class FingerprintError(DataSpecError):
    """A fingerprint cannot be computed: too few cases, no labelled voxel, mixed scan dims."""


class ModalityKind(StrEnum):
    """What a channel is, as far as normalisation cares."""

    CT = "ct"
    MRI = "mri"
    OTHER = "other"


_CT_TOKENS = {"ct", "cect", "ncct", "cta", "hu"}
_MR_TOKENS = {"t1", "t1w", "t1c", "t1ce", "t1gd", "t2", "t2w", "flair", "adc", "dwi", "pd"}
_MR_TOKENS |= {"cine", "swi", "dce", "lge", "bold"}


def modality_kind(channel_name: str) -> ModalityKind:
    """Classify a manifest channel name. Example: ``modality_kind("MRI") == ModalityKind.MRI``.

    Args:
        channel_name: the manifest's ``modality`` value. Example: ``"CT"``, ``"T2"``, ``"cine MRI"``.
    """
    name = channel_name.strip().lower()
    tokens = {t for t in re.split(r"[^a-z0-9]+", name) if t}
    if tokens & _CT_TOKENS or "tomograph" in name:
        return ModalityKind.CT
    if tokens & _MR_TOKENS or any(t.startswith("mr") for t in tokens) or "magnetic" in name:
        return ModalityKind.MRI
    return ModalityKind.OTHER


class ChannelIntensity(BaseModel):
    """Foreground intensity statistics of one channel, pooled over every training case.

    Args:
        modality: ``ct``, ``mri`` or ``other``, from the channel's manifest name.
        levels: the percentile levels, always ``INTENSITY_LEVELS``.
        percentiles: one value per level, from the pooled foreground voxel sample.
        mean: mean over all foreground voxels.
        sd: standard deviation over all foreground voxels.
    """

    model_config = _Strict

    modality: ModalityKind
    levels: tuple[float, ...] = INTENSITY_LEVELS
    percentiles: tuple[float, ...]
    mean: float
    sd: Annotated[float, Field(ge=0.0)]

    @model_validator(mode="after")
    def _check(self) -> ChannelIntensity:
        if tuple(self.levels) != INTENSITY_LEVELS or len(self.percentiles) != len(self.levels):
            raise ValueError(f"expected levels {INTENSITY_LEVELS} and one percentile per level")
        if list(self.percentiles) != sorted(self.percentiles):
            raise ValueError("percentiles must not decrease with the level")
        return self


class DatasetFingerprint(BaseModel):
    """Aggregate statistics of a site's training split: all a planner needs, nothing per case.

    Args:
        version: schema version. Default 1.
        spatial_dims: the task's network dims (the manifest's). Example: ``2``.
        scan_dims: spatial dims of the scans (3 for volumes sliced by a 2D task). Example: ``3``.
        num_cases: training cases behind the figures (at least ``MIN_CASES``).
        window_cases: cases averaged into each spacing/shape figure, ``min(5, num_cases)``.
        modality: ``ct`` if every channel is CT, else ``mri`` if one is MRI, else ``other``.
        geometry_levels: the spacing/shape percentile levels, always ``GEOMETRY_LEVELS``.
        spacing: per level, the voxel spacing per scan axis (mm). Example: ``((1.4, 1.4, 5.0), ...)``.
        shape: per level, the scan size per axis (voxels).
        channels: foreground intensity statistics per channel.
        foreground_voxels: labelled (non-background) voxels behind the intensity figures.
        class_frequencies: share of voxels per class, background first; sums to 1.
        labelled_voxels: every voxel of the label maps (the denominator of the shares).
    """

    model_config = _Strict

    version: Literal[1] = FINGERPRINT_VERSION
    spatial_dims: Literal[2, 3]
    scan_dims: Literal[2, 3]
    num_cases: Annotated[int, Field(ge=MIN_CASES)]
    window_cases: Annotated[int, Field(ge=MIN_CASES, le=WINDOW_CASES)]
    modality: ModalityKind
    geometry_levels: tuple[float, ...] = GEOMETRY_LEVELS
    spacing: tuple[tuple[_Pos, ...], ...]
    shape: tuple[tuple[_Pos, ...], ...]
    channels: Annotated[tuple[ChannelIntensity, ...], Field(min_length=1, max_length=16)]
    foreground_voxels: Annotated[int, Field(ge=1)]
    class_frequencies: Annotated[tuple[float, ...], Field(min_length=2, max_length=64)]
    labelled_voxels: Annotated[int, Field(ge=1)]

    @model_validator(mode="after")
    def _check(self) -> DatasetFingerprint:
        if tuple(self.geometry_levels) != GEOMETRY_LEVELS:
            raise ValueError(f"expected geometry_levels {GEOMETRY_LEVELS}")
        if self.window_cases != min(WINDOW_CASES, self.num_cases):
            raise ValueError("window_cases must be min(5, num_cases)")
        for name, rows in (("spacing", self.spacing), ("shape", self.shape)):
            if len(rows) != len(GEOMETRY_LEVELS) or any(len(r) != self.scan_dims for r in rows):
                raise ValueError(f"{name} needs {len(GEOMETRY_LEVELS)} rows of {self.scan_dims}")
        if self.scan_dims < self.spatial_dims:
            raise ValueError("a 3D task needs 3D scans")
        if (
            any(f < 0 for f in self.class_frequencies)
            or abs(sum(self.class_frequencies) - 1) > 1e-6
        ):
            raise ValueError("class_frequencies must be non-negative shares summing to 1")
        return self

    def level(self, which: Literal["spacing", "shape"], percent: float) -> tuple[float, ...]:
        """The spacing or shape row of one level. Example: ``fp.level("spacing", 50.0)``."""
        return getattr(self, which)[GEOMETRY_LEVELS.index(percent)]  # type: ignore[no-any-return]


def window_percentiles(values: Sequence[float], levels: Iterable[float]) -> list[float]:
    """Percentiles that never equal one value: the mean of ``min(5, n)`` order statistics.

    The window of ``k = min(5, n)`` sorted values nearest the percentile's rank is averaged,
    so each result mixes at least ``k`` values.

    Args:
        values: one value per case. Example: ``[1.0, 1.2, 1.5]``.
        levels: percentile levels in [0, 100]. Example: ``(10, 50, 90)``.
    """
    import numpy as np

    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    if n == 0:
        raise FingerprintError("expected at least one value for a percentile, found none")
    k = min(WINDOW_CASES, n)
    out = []
    for q in levels:
        rank = q / 100.0 * (n - 1)
        start = int(np.clip(np.floor(rank - (k - 1) / 2 + 0.5), 0, n - k))
        out.append(float(x[start : start + k].mean()))
    return out


def _scan_axes(affine: np.ndarray, ndim: int, spatial_dims: int) -> list[int]:
    """Array axes in the order training sees them: RAS for 3D tasks, as stored otherwise."""
    import numpy as np

    if spatial_dims != 3:
        return list(range(ndim))
    world = [int(np.argmax(np.abs(affine[:3, a]))) for a in range(ndim)]
    return sorted(range(ndim), key=lambda a: world[a]) if len(set(world)) == ndim else [0, 1, 2]


def compute_fingerprint(
    manifest: DatasetManifest, *, samples_per_case: int = SAMPLES_PER_CASE, seed: int = 0
) -> DatasetFingerprint:
    """Read every training case of a manifest and reduce it to a ``DatasetFingerprint``.

    Args:
        manifest: the site's manifest (loaded, so paths resolve). Example: ``load_manifest(p)``.
        samples_per_case: foreground voxels sampled per case and channel for the intensity
            percentiles. Default 10,000.
        seed: seed of the voxel sampling. Default 0.

    Raises:
        FingerprintError: fewer than ``MIN_CASES`` cases, scans that disagree with the
            manifest or each other, no labelled voxel.
        ImageReadError: a scan does not load (the message names the file; it stays local).
    """
    import numpy as np

    from data_specs.imaging.imageio import read_image

    cases = list(manifest.iter_cases(SplitName.TRAINING))
    if len(cases) < MIN_CASES:
        raise FingerprintError(
            f"expected at least {MIN_CASES} training cases for a fingerprint, found {len(cases)}"
        )
    pool = _Pool(manifest, samples_per_case, np.random.default_rng(seed))
    for case in cases:
        paths = manifest.resolve(case)
        image = read_image(paths.image)
        label = read_image(paths.label, label=True).array[0]  # type: ignore[arg-type]
        pool.add(image, label)
    try:
        return pool.finish()
    except ValidationError as exc:
        raise FingerprintError(
            f"the statistics do not form a valid fingerprint ({exc.error_count()} problem(s), "
            f"first: {exc.errors()[0]['msg']})"
        ) from None


class _Pool:
    """Running sums and voxel samples over a site's training cases; nothing kept per case
    beyond its spacing and shape, which only leave as window means."""

    def __init__(self, manifest: DatasetManifest, samples: int, rng: np.random.Generator) -> None:
        import numpy as np

        self.manifest, self.samples, self.rng = manifest, samples, rng
        self.n_ch, self.n_cls = manifest.num_channels, manifest.num_classes
        self.spacings: list[tuple[float, ...]] = []
        self.shapes: list[tuple[float, ...]] = []
        self.voxels: list[list[np.ndarray]] = [[] for _ in range(self.n_ch)]
        self.sums = np.zeros((self.n_ch, 2), dtype=np.float64)  # sum, sum of squares
        self.foreground = 0
        self.counts = np.zeros(self.n_cls, dtype=np.int64)

    def add(self, image: ImageData, label: np.ndarray) -> None:
        import numpy as np

        if image.num_channels != self.n_ch or image.spatial_shape != label.shape:
            raise FingerprintError(
                f"expected {self.n_ch} channel(s) and a label of the image's shape in every "
                "training case; run `fedseg data validate` on the manifest"
            )
        ndim = len(image.spatial_shape)
        if self.shapes and ndim != len(self.shapes[0]):
            raise FingerprintError("expected every training scan to have the same number of dims")
        axes = _scan_axes(image.affine, ndim, self.manifest.spatial_dims)
        self.spacings.append(tuple(image.spacing[a] for a in axes))
        self.shapes.append(tuple(float(image.spatial_shape[a]) for a in axes))
        values = label.ravel()
        if values.min() < 0 or values.max() >= self.n_cls:
            raise FingerprintError(
                f"expected label values 0..{self.n_cls - 1} in every training case"
            )
        self.counts += np.bincount(values, minlength=self.n_cls)
        fg = (label > 0) & np.isfinite(image.array).all(axis=0)
        n_fg = int(fg.sum())
        if n_fg == 0:
            return
        self.foreground += n_fg
        pick = np.sort(self.rng.choice(n_fg, size=min(self.samples, n_fg), replace=False))
        for c in range(self.n_ch):
            voxels = image.array[c][fg].astype(np.float64)
            self.sums[c] += (voxels.sum(), np.square(voxels).sum())
            self.voxels[c].append(voxels[pick])

    def finish(self) -> DatasetFingerprint:
        import numpy as np

        if self.foreground == 0:
            raise FingerprintError(
                "expected labelled (non-background) voxels in the training cases"
            )
        kinds = [modality_kind(n) for n in self.manifest.channel_names]
        channels = []
        for c in range(self.n_ch):
            mean = self.sums[c, 0] / self.foreground
            sd = float(np.sqrt(max(self.sums[c, 1] / self.foreground - mean**2, 0.0)))
            pct = np.percentile(np.concatenate(self.voxels[c]), INTENSITY_LEVELS)
            channels.append(
                ChannelIntensity(
                    modality=kinds[c],
                    percentiles=tuple(float(v) for v in np.maximum.accumulate(pct)),
                    mean=float(mean),
                    sd=sd,
                )
            )
        n, ndim = len(self.shapes), len(self.shapes[0])
        return DatasetFingerprint(
            spatial_dims=self.manifest.spatial_dims,
            scan_dims=ndim,  # type: ignore[arg-type]
            num_cases=n,
            window_cases=min(WINDOW_CASES, n),
            modality=_overall_modality(kinds),
            spacing=_geometry(self.spacings, ndim),
            shape=_geometry(self.shapes, ndim),
            channels=tuple(channels),
            foreground_voxels=self.foreground,
            class_frequencies=tuple(float(v) for v in self.counts / self.counts.sum()),
            labelled_voxels=int(self.counts.sum()),
        )


def _geometry(rows: list[tuple[float, ...]], ndim: int) -> tuple[tuple[float, ...], ...]:
    per_axis = [window_percentiles([r[a] for r in rows], GEOMETRY_LEVELS) for a in range(ndim)]
    return tuple(tuple(per_axis[a][i] for a in range(ndim)) for i in range(len(GEOMETRY_LEVELS)))


def _overall_modality(kinds: list[ModalityKind]) -> ModalityKind:
    if all(k == ModalityKind.CT for k in kinds):
        return ModalityKind.CT
    return ModalityKind.MRI if ModalityKind.MRI in kinds else ModalityKind.OTHER
