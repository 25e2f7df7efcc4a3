"""Sample-level DP-SGD in a site's local training, with Opacus (issue 21).

``fit_private`` is the DP twin of ``local_training.fit``: Opacus wraps the model
(``GradSampleModule``: per-sample gradients), the optimiser (``DPOptimizer``: each case's
gradient clipped to ``max_grad_norm``, Gaussian noise of std ``z · max_grad_norm`` on the sum)
and the loader (``DPDataLoader``: Poisson sampling at rate ``1 / batches per epoch``), and its
RDP accountant turns the steps into (ε, δ). Everything else of the round (start state, upload,
personal model) is unchanged.

Batch norm is refused: it normalises each case with its batch's statistics, so a case's
gradient depends on the other cases. Instance norm (``TaskSpec.norm = "instance"``) or group
norm keep each case on its own.

Opacus is an optional extra (``pip install 'fedseg[dpsgd]'``); it is imported only here.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from data_specs.privacy.sample_dp import DPSGDConfig, SampleDPSpent
from data_specs.wire import TrainConfig
from site_agent.errors import TrainingError
from site_agent.training.local_training import BatchTransform, FitStats, LrAt

log = logging.getLogger(__name__)

NORM_HINT = (
    "build the task with instance norm (TaskSpec.norm = 'instance') or group norm: batch norm "
    "normalises each case with its batch's statistics, so a case's gradient is not its own"
)


def _opacus() -> Any:
    try:
        import opacus
    except ImportError as exc:  # pragma: no cover - the extra is installed with [test]
        raise TrainingError(
            "train.dp_sgd needs Opacus: pip install 'fedseg[dpsgd]' at this site"
        ) from exc
    return opacus


def check_config(config: TrainConfig) -> None:
    """Refuse train options whose terms would bypass the per-sample clipping.

    Raises:
        TrainingError: deep supervision or FedProx together with ``dp_sgd``.
    """
    if config.deep_supervision:
        raise TrainingError(
            "train.dp_sgd cannot combine with deep_supervision: the site-local heads' "
            "gradients would not be clipped per sample"
        )
    if config.fedprox_mu > 0:
        raise TrainingError(
            "train.dp_sgd cannot combine with fedprox_mu > 0: the proximal term's gradient "
            "would be replaced by the clipped per-sample gradients"
        )


def check_model(model: nn.Module) -> None:
    """Refuse a model Opacus cannot train with per-sample gradients.

    Raises:
        TrainingError: batch norm (with the instance-norm hint) or another unsupported layer.
    """
    from opacus.validators import ModuleValidator

    _opacus()
    errors = ModuleValidator.validate(model, strict=False)
    if not errors:
        return
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise TrainingError(f"train.dp_sgd cannot train a model with batch norm: {NORM_HINT}")
    first = str(errors[0]).splitlines()[0][:200]
    raise TrainingError(f"train.dp_sgd cannot train this model with Opacus: {first}")


def epsilon_spent(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε after ``steps`` Poisson-subsampled Gaussian steps, from Opacus's RDP accountant.

    Args:
        noise_multiplier: ``z``. Example: ``1.1``.
        sample_rate: ``q``, a case's chance to be in a batch. Example: ``0.25``.
        steps: steps taken. Example: ``12``.
        delta: δ. Example: ``1e-5``.
    """
    from opacus.accountants import RDPAccountant

    if steps <= 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta))


def check_budget(
    dp: DPSGDConfig, batches: int, epochs: int, max_steps: int | None, round_: int
) -> None:
    """Refuse a round whose steps would take the site's total ε over ``dp.epsilon_budget``.

    The steps planned (``epochs`` passes of ``batches`` Poisson batches, at most ``max_steps``)
    bound the steps taken, and the total counts them in every round up to ``round_``, as the
    reported ``epsilon_total`` does.

    Raises:
        TrainingError: the round would exceed the budget.
    """
    if dp.epsilon_budget is None:
        return
    planned = batches * epochs if max_steps is None else min(batches * epochs, max_steps)
    after = epsilon_spent(dp.noise_multiplier, 1.0 / batches, planned * round_, dp.delta)
    if after > dp.epsilon_budget:
        raise TrainingError(
            f"train.dp_sgd: round {round_} ({planned} steps) would bring this site's total "
            f"epsilon to {after:.3f}, over the budget of {dp.epsilon_budget:g}; the site does "
            "not train it"
        )


def poisson_loader(loader: DataLoader, generator: torch.Generator) -> DataLoader:
    """``loader``'s dataset in Poisson batches: each case joins each batch with ``q``.

    ``q = 1 / len(loader)`` and ``len(loader)`` batches per epoch, as Opacus's
    ``DPDataLoader``; an empty draw yields ``None`` (Opacus's own empty batch breaks on
    dict items). ``generator`` should not be derivable from the round's seed, which the
    aggregator knows: which cases were drawn is part of the guarantee.
    """
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler
    from torch.utils.data import default_collate

    sampler = UniformWithReplacementSampler(
        num_samples=len(loader.dataset),  # type: ignore[arg-type]
        sample_rate=1.0 / len(loader),
        generator=generator,
    )
    return DataLoader(
        loader.dataset,
        batch_sampler=sampler,
        collate_fn=lambda items: default_collate(items) if items else None,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
    )


def _entropy() -> int:
    return int.from_bytes(os.urandom(8), "little") >> 1


def _empty_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """A Poisson batch with no case: the step still adds the noise (and counts)."""
    for p in model.parameters():
        if p.requires_grad:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)  # type: ignore[attr-defined]
    optimizer.step()


def fit_private(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    *,
    dp: DPSGDConfig,
    round_: int,
    device: torch.device | str,
    epochs: int,
    max_steps: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    batch_transform: BatchTransform | None = None,
    lr_at: LrAt | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[FitStats, SampleDPSpent]:
    """Train ``model`` in place with DP-SGD for some epochs (float32, no autocast).

    Args:
        model: the network on ``device``; hooks are added for the run and removed after.
        loader: the round's training loader (its batch size sets the sampling rate).
        optimizer: from ``make_optimizer`` over ``model``'s parameters only.
        loss_fn: a loss that is a mean over the batch's cases (DiceCE is).
        dp: the DP-SGD options. Example: ``DPSGDConfig(noise_multiplier=1.1)``.
        round_: the federated round, from 1 (for the total ε bound).
        device: where batches go.
        epochs: passes (of ``len(loader)`` Poisson batches each).
        max_steps: stop after this many steps. Default None.
        should_stop: polled once per step to abort. Default never.
        batch_transform: per-batch augmentation on the device. Default None.
        lr_at: learning rate of each local step. Default None.
        on_epoch: called with ``(epoch, mean loss)`` after each epoch. Default None.

    Returns:
        The fit statistics and the accountant's (ε, δ) for this round and rounds 1..round_.

    Raises:
        TrainingError: an unsupported model, an empty split or a non-finite loss.
    """
    from opacus import PrivacyEngine

    check_model(model)
    if len(loader) == 0:
        raise TrainingError("the training split yielded no batch: nothing to train on")
    check_budget(dp, len(loader), epochs, max_steps, round_)
    dp_loader = poisson_loader(loader, torch.Generator().manual_seed(_entropy()))
    engine = PrivacyEngine(accountant="rdp")
    private, dp_optimizer, _ = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=dp_loader,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        poisson_sampling=False,  # dp_loader already samples as Opacus's DPDataLoader does
        # Noise from OS entropy: the round's seed comes from the aggregator, which could
        # otherwise replay the noise.
        noise_generator=torch.Generator(device=device).manual_seed(_entropy()),
    )
    private.forbid_grad_accumulation()
    sample_rate = 1.0 / len(dp_loader)  # Opacus's own rate for this loader
    steps = samples = filled = 0
    loss_sum = 0.0
    aborted = False
    try:
        private.train()
        for epoch in range(epochs):
            epoch_loss, epoch_steps, epoch_filled = 0.0, 0, 0
            for batch in dp_loader:
                if should_stop():
                    aborted = True
                    break
                if lr_at is not None:
                    for group in dp_optimizer.param_groups:
                        group["lr"] = lr_at(steps)
                dp_optimizer.zero_grad(set_to_none=True)
                if batch is None or batch["image"].shape[0] == 0:
                    _empty_step(private, dp_optimizer)  # Poisson drew no case
                else:
                    images, labels = batch["image"].to(device), batch["label"].to(device)
                    if batch_transform is not None:
                        images, labels = batch_transform(images, labels)
                    loss = loss_fn(private(images.contiguous()).float(), labels)
                    loss.backward()
                    dp_optimizer.step()
                    epoch_loss += float(loss.detach())
                    epoch_filled += 1
                    samples += images.shape[0]
                steps += 1
                epoch_steps += 1
                if max_steps is not None and steps >= max_steps:
                    break
            mean = epoch_loss / max(epoch_filled, 1)
            if not math.isfinite(mean):
                raise TrainingError(
                    f"training loss became {mean} in epoch {epoch + 1}; "
                    "lower the learning rate or check the labels"
                )
            loss_sum += epoch_loss
            filled += epoch_filled
            if on_epoch is not None and epoch_steps:
                on_epoch(epoch, mean)
            if aborted or (max_steps is not None and steps >= max_steps):
                break
    finally:
        private._close()  # hooks and per-sample gradients off the site's model
    spent = SampleDPSpent(
        epsilon_round=engine.accountant.get_epsilon(dp.delta) if steps else 0.0,
        epsilon_total=epsilon_spent(dp.noise_multiplier, sample_rate, steps * round_, dp.delta),
        delta=dp.delta,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        sample_rate=sample_rate,
        steps=steps,
        epsilon_next=epsilon_spent(
            dp.noise_multiplier, sample_rate, steps * (round_ + 1), dp.delta
        ),
    )
    log.info("DP-SGD round %d: %d steps, ε round %.3f", round_, steps, spent.epsilon_round)
    stats = FitStats(steps, samples, loss_sum / max(filled, 1), aborted)
    return stats, spent
