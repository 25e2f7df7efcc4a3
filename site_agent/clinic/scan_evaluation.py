"""Segmentation quality in each scan's own geometry: predict, map back to the scan's grid, then
Dice per class and HD95 per volume (3D for a stack of 2D slices), averaged over the cases.

This is what a clinician's mask is judged by: the prediction goes through exactly the path of
``fedseg site infer`` (``prepare_scan`` → ``predict_scores`` → ``to_scan_geometry``) and is
compared with the label file as stored, not with a resampled or cropped copy. Only aggregates
leave this module.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from data_specs.constants import Precision
from data_specs.task_spec import TaskSpec
from site_agent.errors import TrainingError
from site_agent.training.evaluation import EvalResult

if TYPE_CHECKING:
    from data_specs.imaging.transforms import PreparedScan
    from data_specs.manifests.manifest import DatasetManifest


@dataclass
class EvalCase:
    """One labelled scan ready for evaluation.

    Args:
        scan: the prepared image and the way back to the scan's grid.
        label: the stored label map, integer, the scan's spatial shape.
        spacing: voxel spacing of the scan (mm, or 1 where the file has none), for HD95.
    """

    scan: PreparedScan
    label: np.ndarray
    spacing: tuple[float, ...]


def load_eval_cases(
    manifest: DatasetManifest, spec: TaskSpec, split: str, *, workers: int | None = None
) -> list[EvalCase]:
    """Prepare every labelled case of a split (each scan read once, in threads).

    Args:
        manifest: the site's manifest (loaded). Example: ``load_manifest(p)``.
        spec: the task spec (preprocessing of the images).
        split: ``training``, ``validation`` or ``test``.
        workers: reader threads. Default None (up to 4).

    Raises:
        TrainingError: a case has no label, or a scan does not load (the file is not named).
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    from data_specs.errors import DataSpecError
    from data_specs.imaging.imageio import read_image
    from data_specs.imaging.transforms import prepare_scan

    cases = [manifest.resolve(c) for c in manifest.iter_cases(split)]
    if any(c.label is None for c in cases):
        raise TrainingError(f"every {split} case needs a label to be evaluated")

    def load(case: Any) -> EvalCase:
        image = list(case.channels) if len(case.channels) > 1 else case.image
        scan = prepare_scan(image, spec, target_spacing=manifest.target_spacing)
        label = read_image(case.label, label=True, mapping=manifest.label_mapping)
        array = np.asarray(label.array)
        if array.ndim == len(scan.geometry.spatial_shape) + 1:
            array = array[0]
        return EvalCase(scan, array.astype(np.int64), tuple(scan.geometry.spacing))

    threads = workers or min(os.cpu_count() or 1, 4)
    try:
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            return list(pool.map(load, cases))
    except DataSpecError as exc:
        raise TrainingError(
            f"a {split} case did not load ({type(exc).__name__}); run `fedseg data validate` "
            "on the manifest for the details"
        ) from exc


def volume_dice(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> list[float]:
    """Dice of each foreground class over a whole volume.

    A class absent from both prediction and truth scores 1, absent from the truth only 0 (as
    MONAI's ``compute_dice`` with ``ignore_empty=False``).
    """
    out = []
    for c in range(1, num_classes):
        p, t = pred == c, truth == c
        denom = int(p.sum()) + int(t.sum())
        out.append(1.0 if denom == 0 else 2.0 * int((p & t).sum()) / denom)
    return out


def volume_hd95(
    pred: np.ndarray, truth: np.ndarray, num_classes: int, spacing: Sequence[float]
) -> list[float]:
    """HD95 of each foreground class (NaN where either side lacks the class), MONAI's metric."""
    from monai.metrics import compute_hausdorff_distance

    out = []
    for c in range(1, num_classes):
        p, t = pred == c, truth == c
        if not p.any() or not t.any():
            out.append(float("nan"))
            continue
        # Distances between the two surfaces do not depend on voxels outside the box holding
        # both masks (plus one voxel, so border voxels stay surface): crop before the
        # distance transforms, which cost in proportion to the array.
        box = _bounding_box(p | t)
        p, t = p[box], t[box]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = compute_hausdorff_distance(
                torch.from_numpy(p)[None, None],
                torch.from_numpy(t)[None, None],
                include_background=True,
                percentile=95,
                spacing=list(spacing[: p.ndim]),
            )
        out.append(float(value.reshape(-1)[0]))
    return out


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box holding ``mask``'s voxels, grown by one voxel on each side."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(hits[0]) - 1, 0), int(hits[-1]) + 2))
    return tuple(box)


def evaluate_cases(
    model: nn.Module,
    cases: Sequence[EvalCase],
    spec: TaskSpec,
    *,
    device: str | torch.device = "cpu",
    precision: Precision | str = Precision.AUTO,
    hd95: bool = True,
) -> EvalResult:
    """Mean Dice per class, mean Dice and mean HD95 over whole scans in their own geometry.

    Args:
        model: the network (plain, routed or any module of the spec).
        cases: from ``load_eval_cases``.
        spec: the task spec.
        device: where to run. Default ``"cpu"``.
        precision: forward-pass precision. Default ``auto``.
        hd95: also compute HD95 (a distance transform per class and case). Default True.

    Raises:
        TrainingError: no case to evaluate.
    """
    from site_agent.clinic.inference import label_map
    from site_agent.training.prediction import predict_scores

    if not cases:
        raise TrainingError("the evaluation split is empty: nothing to evaluate")
    k = spec.out_channels
    dice_rows, hd_values = [], []
    was_training = model.training
    try:
        for case in cases:
            scores = predict_scores(
                model,
                spec,
                case.scan.image,
                sliced=case.scan.sliced,
                device=device,
                precision=precision,
            )
            pred = case.scan.to_scan_geometry(label_map(scores))
            if pred.shape != case.label.shape:
                raise TrainingError(
                    f"prediction of shape {pred.shape} does not match its label {case.label.shape}"
                )
            dice_rows.append(volume_dice(pred, case.label, k))
            if hd95:
                hd_values += [v for v in volume_hd95(pred, case.label, k, case.spacing)]
    finally:
        model.train(was_training)
    per_class = [float(v) for v in np.mean(np.asarray(dice_rows), axis=0)]
    finite = [v for v in hd_values if math.isfinite(v)]
    return EvalResult(
        dice_per_class=per_class,
        mean_dice=float(np.mean(per_class)),
        hd95=float(np.mean(finite)) if finite else None,
        num_cases=len(cases),
        case_dice=[float(np.mean(row)) for row in dice_rows],
    )
