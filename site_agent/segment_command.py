"""What ``fedseg site infer`` and ``fedseg site evaluate`` do, apart from parsing their options."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from site_agent.errors import ScanError, TrainingError
from site_agent.models import ModelKind, load_model
from site_agent.settings import SiteSettings
from site_agent.workdir import WorkDir

if TYPE_CHECKING:
    from data_specs.manifest import DatasetManifest
    from data_specs.task_spec import TaskSpec

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
    from data_specs.manifest import load_manifest

    return load_manifest(settings.require_manifest())


def run_infer(
    settings: SiteSettings,
    scan: Path,
    output: Path,
    *,
    kind: str = "global",
    experiment_id: str | None = None,
    weights: Path | None = None,
    png: Path | None = None,
) -> list[str]:
    """Segment ``scan`` into ``output`` (and ``png``); return the lines to print.

    Args:
        settings: site settings (work dir, optional manifest, device).
        scan: NIfTI file or DICOM series folder. Example: ``Path("scan.nii.gz")``.
        output: the mask to write. Example: ``Path("scan_mask.nii.gz")``.
        kind: ``global``, ``personal`` or ``routed``. Default ``global``.
        experiment_id: the experiment. Default None (the only one known).
        weights: a model file to use instead of the work dir's. Default None.
        png: a picture to write as well. Default None.

    Raises:
        ScanError, ModelMismatchError, WorkDirError: with a message saying what is wrong.
    """
    from site_agent.inference import segment_scan, write_segmentation

    if not scan.exists():
        raise ScanError(f"no scan at {scan}")
    model, spec = load_model(
        WorkDir(settings.work_dir),
        _kind(kind),
        experiment_id=experiment_id,
        weights=weights,
    )
    manifest = _site_manifest(settings)
    spacing = manifest.target_spacing if manifest is not None else None
    seg = segment_scan(model, spec, scan, target_spacing=spacing, device=settings.resolve_device())
    write_segmentation(seg, output)
    lines = [f"mask written to {output} (shape {seg.geometry.spatial_shape}, {seg.seconds:.1f} s)"]
    lines.extend(_choice_note(settings, kind, experiment_id, weights))
    if png is not None:
        from data_specs.imageio import read_image
        from site_agent.picture import class_names_for, save_mask_picture

        image = read_image(scan)
        names = class_names_for(spec.out_channels, manifest.labels if manifest else None)
        save_mask_picture(image.array, seg.mask, png, class_names=names, spacing=image.spacing)
        lines.append(f"picture written to {png}")
    return lines


def _choice_note(
    settings: SiteSettings, kind: str, experiment_id: str | None, weights: Path | None
) -> list[str]:
    """For ``--model routed`` after ``fedseg site adapt``: which model the safeguard chose."""
    if kind != "routed" or weights is not None:
        return []
    from site_agent.models import known_experiments
    from site_agent.outside_models import read_choice

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
    from data_specs.manifest import load_manifest
    from site_agent.datasets import check_task_fits, load_split
    from site_agent.evaluation import evaluate_segmentation

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
    model, spec = load_model(
        WorkDir(settings.work_dir),
        _kind(kind),
        experiment_id=experiment_id,
        weights=weights,
        spec=spec,
    )
    check_task_fits(manifest, spec)
    data = load_split(manifest, spec, split_name, train=False, seed=0, fit="none")
    assert data is not None  # the split has cases, so it is declared
    device = settings.resolve_device()
    result = evaluate_segmentation(model.to(device), data, spec, device=device)
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
