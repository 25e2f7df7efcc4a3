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
BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
LrAt = Callable[[int], float]
"""Learning rate for the local step about to be taken (0-based)."""


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


def make_optimizer(
    model: nn.Module, config: TrainConfig, extra: Iterable[nn.Parameter] = ()
) -> torch.optim.Optimizer:
    """SGD (momentum 0.9), SGD with Nesterov momentum 0.99, Adam or AdamW, as the config says.

    Args:
        model: the model to optimise.
        config: the round's train config. Example: ``TrainConfig(optimizer="adam", lr=1e-3)``.
        extra: more parameters to optimise (deep-supervision heads). Default none.
    """
    params = [p for p in model.parameters() if p.requires_grad] + list(extra)
    lr, wd = config.lr, config.weight_decay
    if config.optimizer == OptimizerName.ADAM:
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if config.optimizer == OptimizerName.ADAMW:
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if config.optimizer == OptimizerName.SGD_NESTEROV:
        return torch.optim.SGD(params, lr=lr, momentum=0.99, nesterov=True, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)


def poly_lr(
    base_lr: float,
    *,
    round_: int,
    total_rounds: int,
    steps_per_round: int,
    exponent: float = 0.9,
) -> LrAt:
    """nnU-Net's poly schedule over the whole federation, continuous across rounds.

    Progress counts whole rounds done plus the share of this round's steps taken, so the last
    step of round r and the first of round r + 1 get neighbouring rates.

    Args:
        base_lr: the experiment's learning rate. Example: ``1e-2``.
        round_: this round, from 1. Example: ``3``.
        total_rounds: rounds of the experiment. Example: ``50``.
        steps_per_round: optimiser steps this site takes in this round. Example: ``18``.
        exponent: the poly exponent. Default 0.9.

    Returns:
        ``lr_at(step)`` for the 0-based local step.
    """
    total = max(total_rounds, 1)
    per = max(steps_per_round, 1)

    def lr_at(step: int) -> float:
        progress = min(((round_ - 1) + step / per) / total, 1.0)
        return base_lr * (1.0 - progress) ** exponent

    return lr_at


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
    bf16: bool = False,
    memory_format: torch.memory_format = torch.contiguous_format,
    batch_transform: BatchTransform | None = None,
    lr_at: LrAt | None = None,
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
        bf16: autocast the forward pass to bf16 (the loss is computed in float32). Default False.
        memory_format: layout of the input batches (``torch.channels_last`` for a 2D model
            converted to it). Default contiguous.
        batch_transform: random augmentation of each ``(images, labels)`` batch on the device
            (``site_agent.training.batch_augment.BatchAugment``). Default None.
        lr_at: learning rate of each local step (``poly_lr``). Default None (the optimiser's).

    Returns:
        Steps, samples and the mean loss.

    Raises:
        TrainingError: the loader is empty, or the loss became NaN or infinite.
    """
    from tqdm.auto import tqdm

    from site_agent.training.precision import autocast

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
                if batch_transform is not None:
                    images, labels = batch_transform(images, labels)
                if lr_at is not None:
                    lr = lr_at(steps + epoch_steps)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                with autocast(bf16, device):
                    logits = model(images.contiguous(memory_format=memory_format))
                loss = loss_fn(logits.float(), labels)
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
