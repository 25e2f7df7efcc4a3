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
from data_specs.imageio import ImageData, read_image
from data_specs.manifest import DatasetManifest, load_manifest

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
    """

    manifest: str
    cases: int = 0
    files: int = 0
    seconds: float = 0.0
    problems: list[Problem] = []

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


@dataclass(frozen=True)
class _CaseJob:
    image: Path
    image_name: str
    label: Path | None
    label_name: str | None
    num_channels: int
    spatial_dims: int
    label_values: tuple[int, ...]
    affine_tol: float


def validate_manifest(
    path: str | Path, *, workers: int | None = None, affine_tol: float = 1e-3
) -> ValidationReport:
    """Check every file a manifest lists; never modifies anything.

    Checks: the manifest loads; training is not empty (unless the manifest is an outside
    site's: unlabelled scans in ``adaptation`` or ``test``) and no declared split is empty; no path
    escapes the manifest's root; no file is listed twice; every file exists and reads; images
    have the declared channel count and suitable dimensions; image and label agree in spatial
    shape and affine; label values are declared.

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
    report.files = sum(1 + (job.label is not None) for job in jobs)
    for problems in _run(jobs, workers):
        report.problems.extend(problems)
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
            paths: dict[str, Path | None] = {case.image: None}
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
            image = paths[case.image]
            label = paths[case.label] if case.label is not None else None
            if image is None or (case.label is not None and label is None):
                continue
            jobs.append(
                _CaseJob(
                    image=image,
                    image_name=case.image,
                    label=label,
                    label_name=case.label,
                    num_channels=manifest.num_channels,
                    spatial_dims=manifest.spatial_dims,
                    label_values=tuple(manifest.label_values),
                    affine_tol=affine_tol,
                )
            )
    return jobs


def _run(jobs: list[_CaseJob], workers: int | None) -> Iterable[list[Problem]]:
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers <= 1 or len(jobs) < _MIN_CASES_FOR_POOL:
        return [_check_case(job) for job in jobs]
    # spawn: safe when the caller already runs threads (torch, uvicorn); fork is not
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
        return list(pool.map(_check_case, jobs, chunksize=max(1, len(jobs) // (4 * workers))))


def _read(path: Path, name: str, label: bool, problems: list[Problem]) -> ImageData | None:
    if not path.exists():
        problems.append(
            Problem(file=name, check=ValidationCheck.EXISTS, expected="a file", found="nothing")
        )
        return None
    try:
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


def _check_case(job: _CaseJob) -> list[Problem]:
    problems: list[Problem] = []
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
        return problems
    label = _read(job.label, job.label_name, True, problems)
    if label is None:
        return problems
    if image is not None:
        problems.extend(_compare_geometry(image, label, job))
    values = np.unique(label.array)
    undeclared = sorted(set(values.tolist()) - set(job.label_values))
    if undeclared:
        problems.append(
            Problem(
                file=job.label_name,
                check=ValidationCheck.LABELS,
                expected=f"label values in {list(job.label_values)}",
                found=f"undeclared values {undeclared[:10]}",
            )
        )
    return problems


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
