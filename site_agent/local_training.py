"""The lean local training loop: epochs of DiceCE steps, an optional penalty term, no FL plumbing.

The hot loop does what a bare MONAI loop does and little else: no host sync per step (the loss
is summed on the device and read once per epoch), no per-step logging, shapes read from the
host-side tensor metadata.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from data_specs.constants import OptimizerName
from data_specs.wire import TrainConfig
from site_agent.errors import TrainingError

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, float], None]
Penalty = Callable[[], torch.Tensor]


@dataclass(frozen=True)
class FitStats:
    """What one call of ``fit`` did.

    Args:
        steps: optimiser steps taken.
        samples: training samples seen (with repeats over epochs).
        mean_loss: mean loss over all steps (without the proximal term).
        aborted: True when the abort flag stopped the loop early.
    """

    steps: int
    samples: int
    mean_loss: float
    aborted: bool = False


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum 0.9, or Adam, as the train config says.

    Args:
        model: the model to optimise.
        config: the round's train config. Example: ``TrainConfig(optimizer="adam", lr=1e-3)``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == OptimizerName.ADAM:
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)


def make_loss() -> nn.Module:
    """DiceCE on logits against integer label maps (softmax, labels one-hot encoded)."""
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True)


def fit(
    model: nn.Module,
    loader: DataLoader | Iterable[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    *,
    device: torch.device | str,
    epochs: int,
    max_steps: int | None = None,
    penalty: Penalty | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_epoch: EpochCallback | None = None,
    progress: bool | None = None,
    desc: str = "train",
) -> FitStats:
    """Train ``model`` in place for some epochs.

    Args:
        model: the network, already on ``device``.
        loader: yields ``{"image": (B, C, *spatial), "label": (B, 1, *spatial)}`` batches.
        optimizer: from ``make_optimizer``.
        loss_fn: from ``make_loss``.
        device: where batches go. Example: ``"cuda"``.
        epochs: passes over ``loader``. Example: ``2``.
        max_steps: stop after this many optimiser steps. Default None (whole epochs).
        penalty: extra loss term computed from the model's current weights, e.g. FedProx's
            ``lambda: proximal_term(model, anchor, mu)``. Default None.
        should_stop: polled once per step (a cheap flag read) to abort. Default never.
        on_epoch: called with ``(epoch, mean loss)`` after each epoch (TensorBoard). Default None.
        progress: show a tqdm bar; None shows one only on a terminal. Default None.
        desc: progress bar label. Default ``"train"``.

    Returns:
        Steps, samples and the mean loss.

    Raises:
        TrainingError: the loader is empty, or the loss became NaN or infinite.
    """
    from tqdm.auto import tqdm

    model.train()
    non_blocking = torch.device(device).type == "cuda"
    steps = samples = 0
    loss_sum = 0.0
    aborted = False
    try:
        total: int | None = len(loader) * epochs  # type: ignore[arg-type]
    except TypeError:
        total = None
    if max_steps is not None and total is not None:
        total = min(total, max_steps)
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=total, desc=desc, unit="step", disable=not show, leave=False)
    try:
        for epoch in range(epochs):
            running = torch.zeros((), device=device)
            epoch_steps = 0
            for batch in loader:
                if should_stop():
                    aborted = True
                    break
                images = batch["image"].to(device, non_blocking=non_blocking)
                labels = batch["label"].to(device, non_blocking=non_blocking)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(images), labels)
                objective = loss if penalty is None else loss + penalty()
                objective.backward()
                optimizer.step()
                running += loss.detach()
                epoch_steps += 1
                samples += images.shape[0]
                bar.update(1)
                if max_steps is not None and steps + epoch_steps >= max_steps:
                    break
            if epoch_steps == 0 and not aborted:
                raise TrainingError("the training split yielded no batch: nothing to train on")
            epoch_loss = float(running.item()) / max(epoch_steps, 1)  # the one sync per epoch
            if not math.isfinite(epoch_loss):
                raise TrainingError(
                    f"training loss became {epoch_loss} in epoch {epoch + 1}; "
                    "lower the learning rate or check the labels"
                )
            steps += epoch_steps
            loss_sum += epoch_loss * epoch_steps
            bar.set_postfix(loss=f"{epoch_loss:.4f}")
            if on_epoch is not None and epoch_steps:
                on_epoch(epoch, epoch_loss)
            if aborted or (max_steps is not None and steps >= max_steps):
                break
    finally:
        bar.close()
    return FitStats(
        steps=steps, samples=samples, mean_loss=loss_sum / max(steps, 1), aborted=aborted
    )
