"""What ``fedseg site infer`` and ``fedseg site evaluate`` do, apart from parsing their options."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from site_agent.errors import ScanError, TrainingError
from site_agent.federation.workdir import WorkDir
from site_agent.settings import SiteSettings

if TYPE_CHECKING:
    from data_specs.manifests.manifest import DatasetManifest
    from data_specs.task_spec import TaskSpec
    from site_agent.clinic.models import ModelKind
    from site_agent.clinic.scan_batch import ScanJob

_KINDS = ("global", "personal", "routed")


def _kind(value: str) -> ModelKind:
    if value not in _KINDS and not (value.startswith("expert:") and len(value) > 7):
        raise ScanError(
            f"--model must be one of {', '.join(_KINDS)} or expert:<site>, got {value!r}"
        )
    return value


def _site_manifest(settings: SiteSettings) -> DatasetManifest | None:
    """The site's manifest when one is configured (resampling and class names), else None."""
    if settings.manifest is None:
        return None
    from data_specs.manifests.manifest import load_manifest

    return load_manifest(settings.require_manifest())


def run_infer(
    settings: SiteSettings,
    scans: Sequence[Path],
    output: Path,
    *,
    channels: Sequence[Path] = (),
    kind: str = "global",
    experiment_id: str | None = None,
    weights: Path | None = None,
    png: Path | None = None,
    mask_suffix: str | None = None,
    echo: Callable[[str], None] = print,
    progress: bool = False,
) -> list[str]:
    """Segment scans into masks (and pictures), loading the model once; return closing lines.

    Every destination is checked and the first line printed before torch and MONAI load.

    Args:
        settings: site settings (work dir, optional manifest, device).
        scans: scan files, DICOM series folders or folders of scans. Example:
            ``[Path("scan.nii.gz")]``.
        output: the mask (one scan) or a folder (several). Example: ``Path("mask.png")``.
        channels: the channel files of one scan, in order, instead of ``scans``. Default none.
        kind: ``global``, ``personal`` or ``routed``. Default ``global``.
        experiment_id: the experiment. Default None (the only one known).
        weights: a model file to use instead of the work dir's. Default None.
        png: a picture (one scan) or a folder of pictures (several). Default None.
        mask_suffix: masks' suffix in a batch. Default None (by scan kind).
        echo: where progress lines go. Default ``print``.
        progress: show a progress bar over several scans (on stderr). Default False.

    Raises:
        ScanError, ModelMismatchError, WorkDirError: with a message saying what is wrong.
    """
    from site_agent.clinic.scan_batch import plan_jobs

    jobs = plan_jobs(scans, output, channels=channels, png=png, mask_suffix=mask_suffix)
    echo(f"segmenting {len(jobs)} scan(s) with the {kind} model")
    from data_specs.constants import ImageFormat
    from site_agent.clinic.models import load_model  # torch and MONAI: after the first line

    manifest = _site_manifest(settings)
    model, spec = load_model(
        WorkDir(settings.work_dir),
        _kind(kind),
        experiment_id=experiment_id,
        weights=weights,
        # Pictures only: the same network without importing MONAI (site_agent.clinic.plain_unet).
        plain=all(job.format == ImageFormat.PIL for job in jobs),
    )
    from site_agent.clinic.class_labels import segment_names

    names = segment_names(
        spec.out_channels,
        labels=manifest.labels if manifest else None,
        workdir=WorkDir(settings.work_dir),
        experiment_id=experiment_id,
        weights=weights,
    )
    mapping = manifest.label_mapping if manifest is not None else None
    values = (
        {k: mapping.stored_value(k) for k in range(spec.out_channels)}
        if mapping is not None and mapping.label_map
        else None
    )
    spacing = manifest.target_spacing if manifest is not None else None
    device = settings.resolve_device()
    lines: list[str] = []
    bar = _progress_bar(len(jobs)) if progress and len(jobs) > 1 else None
    for job in jobs:
        lines.extend(_infer_one(model, spec, job, spacing, device, names, values))
        if bar is not None:
            bar.update(1)
        elif len(jobs) > 1:
            echo(lines[-1])
    if bar is not None:
        bar.close()
    note = _choice_note(settings, kind, experiment_id, weights)
    return [*lines, *note] if len(jobs) == 1 else [f"{len(jobs)} masks written to {output}", *note]


def _infer_one(
    model: Any,
    spec: TaskSpec,
    job: ScanJob,
    spacing: Sequence[float] | None,
    device: Any,
    names: dict[int, str],
    values: dict[int, int] | None,
) -> list[str]:
    from data_specs.constants import ImageFormat
    from site_agent.clinic.inference import segment_scan, write_segmentation

    scan = job.files[0] if len(job.files) == 1 else list(job.files)
    seg = segment_scan(model, spec, scan, target_spacing=spacing, device=device)
    source = job.files[0] if job.format == ImageFormat.DICOM else None
    write_segmentation(seg, job.mask, source=source, class_names=names, values=values)
    lines = [
        f"mask written to {job.mask} (shape {seg.geometry.spatial_shape}, {seg.seconds:.1f} s)"
    ]
    if job.picture is not None:
        from data_specs.errors import DataSpecError
        from data_specs.imaging.imageio import read_image
        from site_agent.clinic.picture import save_mask_picture

        try:
            image = read_image(scan)
        except DataSpecError as exc:
            raise ScanError(f"the scan cannot be drawn: {exc}") from exc
        save_mask_picture(
            image.array,
            seg.mask,
            job.picture,
            class_names=names,
            affine=seg.geometry.affine,
            picture=job.format == ImageFormat.PIL,
        )
        lines.append(f"picture written to {job.picture}")
    return lines


def _progress_bar(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="scan", file=sys.stderr, dynamic_ncols=True)


def _choice_note(
    settings: SiteSettings, kind: str, experiment_id: str | None, weights: Path | None
) -> list[str]:
    """For ``--model routed`` after ``fedseg site adapt``: which model the safeguard chose."""
    if kind != "routed" or weights is not None:
        return []
    from site_agent.clinic.models import known_experiments
    from site_agent.clinic.outside_models import read_choice

    workdir = WorkDir(settings.work_dir)
    known = known_experiments(workdir)
    exp_id = experiment_id or (known[0] if len(known) == 1 else None)
    record = read_choice(workdir, exp_id) if exp_id else None
    if record is None:
        return []
    return [
        f"model: {record['choice']}, as `fedseg site adapt` chose ({record.get('message', '')})"
    ]


def run_evaluate(
    settings: SiteSettings,
    *,
    kind: str = "global",
    experiment_id: str | None = None,
    weights: Path | None = None,
    split: str = "test",
    spec: TaskSpec | None = None,
) -> dict[str, Any]:
    """Dice per class, mean Dice, HD95 and case count of a model on a local labelled split.

    Args:
        settings: site settings with a manifest.
        kind: ``global``, ``personal`` or ``routed``. Default ``global``.
        experiment_id: the experiment. Default None (the only one known).
        weights: a model file to use instead. Default None.
        split: ``test``, ``validation`` or ``training``. Default ``test``.
        spec: the task spec of ``weights`` when this site has no record of the experiment.
            Default None.

    Returns:
        ``{"split", "cases", "items", "dice_per_class", "mean_dice", "hd95"}``; class names
        from the manifest.

    Raises:
        TrainingError: the split is missing, empty or unlabelled.
    """
    from data_specs.constants import SplitName
    from data_specs.manifests.manifest import load_manifest
    from site_agent.clinic.scan_evaluation import evaluate_cases, load_eval_cases
    from site_agent.training.datasets import check_task_fits

    manifest = load_manifest(settings.require_manifest())
    try:
        split_name = SplitName(split)
    except ValueError:
        raise TrainingError(
            f"--split must be test, validation or training, got {split!r}"
        ) from None
    cases = list(manifest.iter_cases(split_name))
    if not cases:
        raise TrainingError(f"the manifest declares no {split} cases")
    if any(c.label is None for c in cases):
        raise TrainingError(f"every {split} case needs a label to be evaluated")
    from site_agent.clinic.models import load_model

    model, spec = load_model(
        WorkDir(settings.work_dir),
        _kind(kind),
        experiment_id=experiment_id,
        weights=weights,
        spec=spec,
    )
    check_task_fits(manifest, spec)
    # Whole scans, predicted as `fedseg site infer` does and scored in their own geometry.
    data = load_eval_cases(manifest, spec, split_name)
    device = settings.resolve_device()
    result = evaluate_cases(model.to(device), data, spec, device=device)
    names = [manifest.labels.get(str(k), f"class {k}") for k in range(1, spec.out_channels)]
    return {
        "split": split,
        "cases": len(cases),
        "items": result.num_cases,
        "dice_per_class": {n: _round(d) for n, d in zip(names, result.dice_per_class, strict=True)},
        "mean_dice": _round(result.mean_dice),
        "hd95": _round(result.hd95),
    }


def _round(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 4)
