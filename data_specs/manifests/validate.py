"""Check a dataset manifest against the files it lists and report every problem (reads only)."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, computed_field

from data_specs.constants import SplitName, ValidationCheck
from data_specs.errors import ImageReadError, ManifestError
from data_specs.imaging.imageio import ImageData, read_image
from data_specs.imaging.label_mapping import LabelMapping, value_histogram
from data_specs.manifests.manifest import DatasetManifest, load_manifest

# A mask whose foreground covers more than this share of its voxels is more likely inverted
# (0 = organ) or stored with the wrong values than a true segmentation.
FOREGROUND_WARN_SHARE = 0.5

# Below this many cases starting worker processes costs more than it saves.
_MIN_CASES_FOR_POOL = 8


class Problem(BaseModel):
    """One thing wrong with one file.

    Args:
        file: the path as the manifest writes it (or the manifest's own path).
            Example: ``"labelsTr/case_003.nii.gz"``.
        check: which check failed. Example: ``ValidationCheck.LABELS``.
        expected: what the check wanted. Example: ``"label values in [0, 1, 2, 3]"``.
        found: what it found. Example: ``"undeclared values [7]"``.
    """

    file: str
    check: ValidationCheck
    expected: str
    found: str


class ValidationReport(BaseModel):
    """Every problem of a manifest; ``ok`` when there are none.

    Args:
        manifest: the manifest file checked.
        cases: cases listed over all splits.
        files: image and label files read.
        seconds: wall time of the check.
        problems: every problem found, in manifest order.
        warnings: things that look wrong but may be right (not counted against ``ok``).
        histograms: each label file's stored values and voxel counts, before the manifest's
            ``label_map`` / ``binarize``. Example: ``{"labels/a.png": {0: 9800, 255: 200}}``.
    """

    manifest: str
    cases: int = 0
    files: int = 0
    seconds: float = 0.0
    problems: list[Problem] = []
    warnings: list[Problem] = []
    histograms: dict[str, dict[int, int]] = {}

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


@dataclass(frozen=True)
class _CaseJob:
    image: tuple[Path, ...]
    image_name: str
    label: Path | None
    label_name: str | None
    num_channels: int
    spatial_dims: int
    label_values: tuple[int, ...]
    affine_tol: float
    mapping: LabelMapping | None = None


@dataclass
class _CaseResult:
    problems: list[Problem]
    warnings: list[Problem]
    histogram: dict[int, int] | None


def validate_manifest(
    path: str | Path, *, workers: int | None = None, affine_tol: float = 1e-3
) -> ValidationReport:
    """Check every file a manifest lists; never modifies anything.

    Checks: the manifest loads; training is not empty (unless the manifest is an outside
    site's: unlabelled scans in ``adaptation`` or ``test``) and no declared split is empty; no path
    escapes the manifest's root; no file is listed twice; every file exists and reads; images
    have the declared channel count and suitable dimensions (channel files share one grid);
    image and label agree in spatial shape and affine; label values, after the manifest's
    ``label_map`` / ``binarize``, are declared. Warns when a mask's foreground covers more than
    half of it (an inverted mask?) or when no mask has any foreground; reports each mask's
    stored value histogram.

    Args:
        path: the ``dataset.json``. Example: ``"site_1/dataset.json"``.
        workers: processes reading files; None picks ``min(cpu count, 8)``, 1 reads in this
            process. Default None.
        affine_tol: largest allowed difference between image and label affine entries (mm).
            Default ``1e-3``.

    Returns:
        The report; ``report.ok`` is True when nothing is wrong.
    """
    start = time.perf_counter()
    report = ValidationReport(manifest=str(path))
    try:
        manifest = load_manifest(path)
    except ManifestError as exc:
        report.problems.append(
            Problem(
                file=str(path),
                check=ValidationCheck.MANIFEST,
                expected="a dataset manifest that loads",
                found=str(exc),
            )
        )
        return report
    report.problems.extend(_split_problems(manifest, str(path)))
    jobs = _case_jobs(manifest, affine_tol, report)
    report.cases = sum(len(list(manifest.iter_cases(s))) for s in SplitName) + len(
        manifest.adaptation or []
    )
    report.files = sum(len(job.image) + (job.label is not None) for job in jobs)
    for job, result in zip(jobs, _run(jobs, workers), strict=True):
        report.problems.extend(result.problems)
        report.warnings.extend(result.warnings)
        if result.histogram is not None and job.label_name is not None:
            report.histograms[job.label_name] = result.histogram
    if report.histograms and not any(
        _foreground(h, manifest.label_mapping) for h in report.histograms.values()
    ):
        report.warnings.append(
            Problem(
                file=str(path),
                check=ValidationCheck.FOREGROUND,
                expected="some foreground in at least one mask",
                found="every mask is background only (label_map or binarize missing?)",
            )
        )
    report.seconds = round(time.perf_counter() - start, 3)
    return report


def _split_problems(manifest: DatasetManifest, where: str) -> list[Problem]:
    problems = []
    if manifest.adaptation is not None and not manifest.adaptation:
        problems.append(
            Problem(
                file=where,
                check=ValidationCheck.SPLIT,
                expected="at least one scan in the declared adaptation list",
                found="an empty list",
            )
        )
    for split in manifest.declared_splits():
        # An outside site trains nothing: its scans are in adaptation or test.
        outside = split == SplitName.TRAINING and manifest.is_outside_site
        if not outside and not list(manifest.iter_cases(split)):
            problems.append(
                Problem(
                    file=where,
                    check=ValidationCheck.SPLIT,
                    expected=f"at least one case in the declared {split} split"
                    + (
                        " (or, for an outside site, unlabelled scans in adaptation or test)"
                        if split == SplitName.TRAINING
                        else ""
                    ),
                    found="no cases",
                )
            )
    return problems


def _case_jobs(
    manifest: DatasetManifest, affine_tol: float, report: ValidationReport
) -> list[_CaseJob]:
    jobs: list[_CaseJob] = []
    seen: dict[Path, str] = {}
    splits = [(str(s), list(manifest.iter_cases(s))) for s in manifest.declared_splits()]
    splits.append(("adaptation", manifest.adaptation or []))
    for split, cases in splits:
        for case in cases:
            paths: dict[str, Path | None] = dict.fromkeys(case.image_files)
            if case.label is not None:
                paths[case.label] = None
            for name in paths:
                try:
                    paths[name] = full = manifest.resolve_path(name)
                except ManifestError as exc:
                    report.problems.append(
                        Problem(
                            file=name,
                            check=ValidationCheck.PATH,
                            expected=f"a path inside {manifest.root}",
                            found=str(exc).split(": ", 1)[-1],
                        )
                    )
                    continue
                if full in seen:
                    report.problems.append(
                        Problem(
                            file=name,
                            check=ValidationCheck.DUPLICATE,
                            expected="each file listed once",
                            found=f"also listed as {seen[full]!r} ({split})",
                        )
                    )
                seen.setdefault(full, name)
            images = [paths[name] for name in case.image_files]
            label = paths[case.label] if case.label is not None else None
            if None in images or (case.label is not None and label is None):
                continue
            jobs.append(
                _CaseJob(
                    image=tuple(p for p in images if p is not None),
                    image_name=", ".join(case.image_files),
                    label=label,
                    label_name=case.label,
                    num_channels=manifest.num_channels,
                    spatial_dims=manifest.spatial_dims,
                    label_values=tuple(manifest.label_values),
                    affine_tol=affine_tol,
                    mapping=manifest.label_mapping,
                )
            )
    return jobs


def _run(jobs: list[_CaseJob], workers: int | None) -> Iterable[_CaseResult]:
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers <= 1 or len(jobs) < _MIN_CASES_FOR_POOL:
        return [_check_case(job) for job in jobs]
    # spawn: safe when the caller already runs threads (torch, uvicorn); fork is not
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
        return list(pool.map(_check_case, jobs, chunksize=max(1, len(jobs) // (4 * workers))))


def _read(
    path: Path | tuple[Path, ...], name: str, label: bool, problems: list[Problem]
) -> ImageData | None:
    missing = [p for p in ((path,) if isinstance(path, Path) else path) if not p.exists()]
    if missing:
        problems.append(
            Problem(
                file=name if isinstance(path, Path) or len(path) == 1 else str(missing[0]),
                check=ValidationCheck.EXISTS,
                expected="a file",
                found="nothing",
            )
        )
        return None
    try:
        if isinstance(path, tuple):
            return read_image(path[0] if len(path) == 1 else list(path))
        return read_image(path, label=label)
    except ImageReadError as exc:
        problems.append(
            Problem(
                file=name,
                check=ValidationCheck.READABLE,
                expected="a readable label map" if label else "a readable image",
                found=str(exc).split(": ", 1)[-1],
            )
        )
        return None


def _check_case(job: _CaseJob) -> _CaseResult:
    problems: list[Problem] = []
    result = _CaseResult(problems=problems, warnings=[], histogram=None)
    image = _read(job.image, job.image_name, False, problems)
    if image is not None:
        if image.num_channels != job.num_channels:
            problems.append(
                Problem(
                    file=job.image_name,
                    check=ValidationCheck.CHANNELS,
                    expected=f"{job.num_channels} channel(s) as the manifest declares",
                    found=f"{image.num_channels} channel(s)",
                )
            )
        ndim = len(image.spatial_shape)
        allowed = (3,) if job.spatial_dims == 3 else (2, 3)
        if ndim not in allowed:
            problems.append(
                Problem(
                    file=job.image_name,
                    check=ValidationCheck.DIMS,
                    expected=f"a {' or '.join(f'{d}D' for d in allowed)} image for a "
                    f"{job.spatial_dims}D task",
                    found=f"a {ndim}D image of shape {image.spatial_shape}",
                )
            )
    if job.label is None or job.label_name is None:
        return result
    label = _read(job.label, job.label_name, True, problems)
    if label is None:
        return result
    if image is not None:
        problems.extend(_compare_geometry(image, label, job))
    result.histogram = value_histogram(label.array)
    classes = job.mapping.apply(label.array) if job.mapping is not None else label.array
    share = float((classes > 0).mean()) if classes.size else 0.0
    if share > FOREGROUND_WARN_SHARE:
        result.warnings.append(
            Problem(
                file=job.label_name,
                check=ValidationCheck.FOREGROUND,
                expected=f"foreground on at most {FOREGROUND_WARN_SHARE:.0%} of the mask",
                found=f"{share:.0%} foreground (values {result.histogram}); an inverted mask? "
                'map it with "label_map"',
            )
        )
    values = np.unique(classes)
    undeclared = sorted(set(values.tolist()) - set(job.label_values))
    if undeclared:
        problems.append(
            Problem(
                file=job.label_name,
                check=ValidationCheck.LABELS,
                expected=f"label values in {list(job.label_values)}"
                + (" after label_map/binarize" if job.mapping is not None else ""),
                found=f"undeclared values {undeclared[:10]}"
                + ("" if job.mapping is not None else '; declare "label_map" or "binarize"'),
            )
        )
    return result


def _foreground(histogram: dict[int, int], mapping: LabelMapping | None) -> bool:
    values = np.asarray(list(histogram), dtype=np.int64)
    classes = mapping.apply(values) if mapping is not None else values
    return bool((classes > 0).any())


def _compare_geometry(image: ImageData, label: ImageData, job: _CaseJob) -> list[Problem]:
    name = job.label_name or ""
    if image.spatial_shape != label.spatial_shape:
        return [
            Problem(
                file=name,
                check=ValidationCheck.SHAPE,
                expected=f"spatial shape {image.spatial_shape} of {job.image_name}",
                found=f"{label.spatial_shape}",
            )
        ]
    diff = float(np.abs(image.affine - label.affine).max())
    if diff > job.affine_tol:
        return [
            Problem(
                file=name,
                check=ValidationCheck.GEOMETRY,
                expected=f"the affine of {job.image_name} (within {job.affine_tol})",
                found=f"an affine differing by up to {diff:.4g}",
            )
        ]
    return []
