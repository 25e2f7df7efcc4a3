"""Global against personal: the extra Dice figures a personalising site reports with each update."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from data_specs.wire import SiteMetrics


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def with_global_and_personal_dice(
    trainer: Any,
    metrics: SiteMetrics,
    *,
    global_state: Mapping[str, torch.Tensor],
    personal_state: Mapping[str, torch.Tensor] | None,
    trained_state: Mapping[str, torch.Tensor],
) -> SiteMetrics:
    """Add ``val_dice_global`` and ``val_dice_personal`` when the round keeps a personal model.

    Both are mean foreground Dice on the site's validation split: of the global model the site
    received this round, and of its personal model after the round. Runs without inside
    personalisation keep no personal model and pay nothing. The trainer's model holds the
    trained weights again afterwards.

    Args:
        trainer: a ``SiteTrainer`` with a validation split (``evaluate_state``, ``load_state``).
        metrics: the figures of the trained model.
        global_state: the global model of the round.
        personal_state: the personal model kept after the round, or None.
        trained_state: the locally trained weights (restored into the model at the end).

    Returns:
        ``metrics`` with the two fields set (null where a figure is not finite).
    """
    if personal_state is None:
        return metrics
    try:
        global_dice = trainer.evaluate_state(global_state).mean_dice
        personal_dice = trainer.evaluate_state(personal_state).mean_dice
    finally:
        trainer.load_state(trained_state)
    return metrics.model_copy(
        update={
            "val_dice_global": _finite(global_dice),
            "val_dice_personal": _finite(personal_dice),
        }
    )
