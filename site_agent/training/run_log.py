"""TensorBoard event files of the site's training: one writer per run tag, written per epoch."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from site_agent.training.evaluation import EvalResult

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class RunLog:
    """Scalars for TensorBoard under ``<folder>/<tag>/``; a no-op when ``folder`` is None.

    Writers are created lazily (importing TensorBoard costs about a second) and flushed per
    epoch, never per step.

    Args:
        folder: the work dir's ``tensorboard/`` folder. Default None (nothing is written).
            Example: ``Path("site_work/tensorboard")``.
    """

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self._writers: dict[str, Any] = {}

    def _writer(self, tag: str) -> Any | None:
        if self.folder is None:
            return None
        writer = self._writers.get(tag)
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter

            parts = [_UNSAFE.sub("_", p) for p in tag.split("/") if p]
            writer = SummaryWriter(log_dir=str(self.folder.joinpath(*parts or ["run"])))
            self._writers[tag] = writer
        return writer

    def epoch_loss(self, tag: str, step: int, loss: float) -> None:
        """Record the mean training loss of one epoch.

        Args:
            tag: run name (experiment id). Example: ``"exp-1"``.
            step: global epoch index across rounds. Example: ``3``.
            loss: mean loss of the epoch.
        """
        writer = self._writer(tag)
        if writer is not None:
            writer.add_scalar("train/loss", loss, step)
            writer.flush()

    def round_metrics(self, tag: str, round_: int, result: EvalResult) -> None:
        """Record validation Dice (mean and per class) and HD95 after a round."""
        writer = self._writer(tag)
        if writer is None:
            return
        if math.isfinite(result.mean_dice):
            writer.add_scalar("val/dice", result.mean_dice, round_)
        for k, value in enumerate(result.dice_per_class, start=1):
            if math.isfinite(value):
                writer.add_scalar(f"val/dice_class_{k}", value, round_)
        if result.hd95 is not None:
            writer.add_scalar("val/hd95", result.hd95, round_)
        writer.flush()

    def close(self) -> None:
        """Close every writer."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
