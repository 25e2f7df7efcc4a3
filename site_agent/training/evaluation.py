"""Segmentation quality on a local split: MONAI Dice per class and mean, HD95; aggregates only."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from data_specs.task_spec import TaskSpec
from data_specs.wire import SiteMetrics
from site_agent.errors import TrainingError


@dataclass(frozen=True)
class EvalResult:
    """Aggregate figures over a split; nothing per case.

    Args:
        dice_per_class: mean Dice of each foreground class (NaN where no case holds the class).
        mean_dice: mean of ``dice_per_class`` over classes present, NaN if none.
        hd95: mean 95th-percentile Hausdorff distance in voxels over finite values, or None.
        num_cases: items evaluated (cases, or slices for a 2D task).
        case_dice: mean foreground Dice of each case, in order (whole-scan evaluation only;
            kept on the site, never sent). Default empty.
    """

    dice_per_class: list[float]
    mean_dice: float
    hd95: float | None
    num_cases: int
    case_dice: list[float] = field(default_factory=list)

    def as_site_metrics(self, **extra: float | None) -> SiteMetrics:
        """The ``SiteMetrics`` to send with an update; NaN figures travel as null.

        Args:
            **extra: other aggregate fields. Example: ``train_loss=0.42, train_seconds=12.0``.
        """
        return SiteMetrics.model_validate(
            {
                "val_dice": _finite_or_none(self.mean_dice),
                "val_dice_per_class": [_finite_or_zero(d) for d in self.dice_per_class],
                "val_hd95": self.hd95,
                "num_val_cases": self.num_cases,
                **{k: _finite_or_none(v) for k, v in extra.items()},
            }
        )


def evaluate_segmentation(
    model: nn.Module,
    data: Dataset,
    spec: TaskSpec,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1,
    sw_batch_size: int = 4,
) -> EvalResult:
    """Dice per foreground class, mean Dice and HD95 of ``model`` on a dataset.

    Items larger than the patch size are predicted with ``sliding_window_inference``; items of
    the patch size take one window.

    Args:
        model: the network (any module mapping images to logits).
        data: yields ``{"image": (C, *spatial), "label": (1, *spatial)}``.
        spec: the task spec (classes, patch size).
        device: where to run. Default ``"cpu"``.
        batch_size: items per forward pass; keep 1 when item sizes differ. Default 1.
        sw_batch_size: windows per forward pass. Default 4.

    Returns:
        Aggregate figures.

    Raises:
        TrainingError: the split is empty.
    """
    from monai.inferers import sliding_window_inference
    from monai.metrics import DiceMetric, HausdorffDistanceMetric
    from monai.networks.utils import one_hot

    if len(data) == 0:  # type: ignore[arg-type]
        raise TrainingError("the evaluation split is empty: nothing to evaluate")
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
    dice = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
    n_classes = spec.out_channels
    num_cases = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            # MONAI warns for every case where a class is absent; those cases are skipped below.
            warnings.simplefilter("ignore")
            for batch in loader:
                images = batch["image"].to(device)
                labels = batch["label"].to(device)
                logits = torch.as_tensor(
                    sliding_window_inference(
                        images, spec.patch_size, sw_batch_size, model, overlap=0.25
                    )
                )
                pred = one_hot(logits.argmax(dim=1, keepdim=True), num_classes=n_classes)
                truth = one_hot(labels.long(), num_classes=n_classes)
                dice(y_pred=pred, y=truth)
                hd(y_pred=pred, y=truth)
                num_cases += images.shape[0]
            per_class = dice.aggregate()
            hd_values = hd.aggregate()
    finally:
        model.train(was_training)
    dice_per_class = [float(v) for v in torch.as_tensor(per_class).reshape(-1).cpu()]
    present = [d for d in dice_per_class if math.isfinite(d)]
    mean_dice = sum(present) / len(present) if present else float("nan")
    finite_hd = torch.as_tensor(hd_values).reshape(-1)
    finite_hd = finite_hd[torch.isfinite(finite_hd)]
    hd95 = float(finite_hd.mean()) if finite_hd.numel() else None
    return EvalResult(dice_per_class, mean_dice, hd95, num_cases)


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _finite_or_zero(value: float) -> float:
    # A class no validation case holds has no Dice; the wire wants numbers, so 0 with the count.
    return value if math.isfinite(value) else 0.0
