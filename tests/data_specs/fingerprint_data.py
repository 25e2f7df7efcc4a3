"""Hand-made site fingerprints for plan tests (no scans needed)."""

from __future__ import annotations

import numpy as np

from data_specs.manifests.fingerprint import INTENSITY_LEVELS, ChannelIntensity, DatasetFingerprint


def make_fingerprint(
    *,
    spacing: tuple[float, ...] = (1.0, 1.0, 10.0),
    shape: tuple[float, ...] = (128.0, 128.0, 10.0),
    spatial_dims: int = 2,
    num_cases: int = 20,
    modality: str = "mri",
    mean: float = 100.0,
    sd: float = 20.0,
    voxels: int = 10_000,
    classes: tuple[float, ...] = (0.9, 0.05, 0.05),
    labelled: int = 1_000_000,
    p10_spacing: tuple[float, ...] | None = None,
) -> DatasetFingerprint:
    """A fingerprint whose intensity percentiles are those of a normal(mean, sd)."""
    from scipy.stats import norm

    pct = tuple(float(mean + sd * norm.ppf(q / 100)) for q in INTENSITY_LEVELS)
    rows = len(shape)
    low = p10_spacing or spacing
    return DatasetFingerprint(
        spatial_dims=spatial_dims,  # type: ignore[arg-type]
        scan_dims=rows,  # type: ignore[arg-type]
        num_cases=num_cases,
        window_cases=min(5, num_cases),
        modality=modality,  # type: ignore[arg-type]
        spacing=(low, spacing, tuple(float(s) * 1.1 for s in spacing)),
        shape=(tuple(np.asarray(shape) * 0.8), shape, tuple(np.asarray(shape) * 1.2)),
        channels=(ChannelIntensity(modality=modality, percentiles=pct, mean=mean, sd=sd),),  # type: ignore[arg-type]
        foreground_voxels=voxels,
        class_frequencies=classes,
        labelled_voxels=labelled,
    )
