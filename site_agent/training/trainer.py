"""The site's trainer: one federated round of local training, free of FL plumbing.

``SiteTrainer.train_round`` is the typed API the client loop uses; ``site_agent.training.client_algo``
wraps it in MONAI's ``ClientAlgo`` so another FL runtime can drive it with ``ExchangeObject``
weights.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data_specs.constants import InputFit, LrSchedule
from data_specs.privacy.sample_dp import SampleDPSpent
from data_specs.task_spec import TaskSpec, build_unet
from data_specs.wire import SiteMetrics, TrainConfig
from personalization.errors import PersonalizationError
from personalization.inside import InsidePolicy, anchor_params, ditto_penalty, proximal_term
from site_agent.errors import ModelMismatchError, TrainingError
from site_agent.training.evaluation import EvalResult, evaluate_segmentation
from site_agent.training.local_training import (
    FitStats,
    Penalty,
    fit,
    make_loss,
    make_optimizer,
    poly_lr,
)
from site_agent.training.precision import memory_format, use_bf16
from site_agent.training.round_scores import with_global_and_personal_dice
from site_agent.training.run_log import RunLog

log = logging.getLogger(__name__)

StateLike = Mapping[str, "torch.Tensor | np.ndarray"]


@dataclass
class TrainResult:
    """What one round of local training produced.

    Args:
        state: the locally trained weights (CPU tensors, full state dict).
        num_samples: training samples behind the update (size of the training split).
        metrics: aggregate metrics (loss, validation Dice, HD95, seconds).
        steps: optimiser steps taken.
        personal_state: Ditto only: the personal model trained this round. Default None.
    """

    state: dict[str, torch.Tensor]
    num_samples: int
    metrics: SiteMetrics
    steps: int = 0
    personal_state: dict[str, torch.Tensor] | None = field(default=None)


def to_torch_state(state: StateLike) -> dict[str, torch.Tensor]:
    """CPU tensors from a state dict of tensors or numpy arrays (copies, never shares)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        t = value.detach() if isinstance(value, torch.Tensor) else torch.from_numpy(np.array(value))
        out[key] = t.to("cpu").clone()
    return out


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached, contiguous CPU copy of a model's state dict (whatever the model's layout)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


class SiteTrainer:
    """Local training and evaluation of the task's U-Net on a site's own data.

    ``site_agent.training.client_algo.SiteClientAlgo`` wraps it as a MONAI ``ClientAlgo``.

    Args:
        spec: the task spec; the U-Net is built from it. Example: ``TaskSpec(out_channels=4)``.
        train_data: training split, items ``{"image", "label"}`` at the patch size.
        val_data: validation split for the metrics sent with each update: a list of
            ``EvalCase`` (whole scans) or a dataset of items. Default None.
        device: ``"cpu"`` or ``"cuda"``. Default ``"cpu"``.
        tensorboard_dir: where event files go (one sub-folder per run tag). Default None (off).
        num_workers: DataLoader workers. Default 0.
        progress: show progress bars; None shows them only on a terminal. Default None.
        optimizer_states: where optimiser states persist between rounds when the train config
            asks for it (``persist_optimizer``); the trainer factory keeps one mapping per site.
            Default None (a fresh optimiser every round).

    With ``spec.fit = resize`` the training items are whole slices resized to the patch size
    and arrive un-augmented; the trainer augments each batch (``BatchAugment``).
    """

    def __init__(
        self,
        spec: TaskSpec,
        train_data: Dataset,
        val_data: Dataset | list[Any] | None = None,
        *,
        device: str = "cpu",
        tensorboard_dir: str | Path | None = None,
        num_workers: int = 0,
        progress: bool | None = None,
        optimizer_states: MutableMapping[str, dict[str, Any]] | None = None,
    ) -> None:
        self.spec = spec
        self.optimizer_states = optimizer_states if optimizer_states is not None else {}
        self.total_rounds: int | None = None
        self.train_data = train_data
        self.val_data = val_data
        self.device = torch.device(device)
        self.num_workers = num_workers
        self.progress = progress
        self.run_log = RunLog(tensorboard_dir)
        self.model = build_unet(spec).to(self.device)
        self._abort = False
        self.dp_sgd_spent: SampleDPSpent | None = None  # the last round's, under train.dp_sgd

    # -- typed API --------------------------------------------------------------------------
    def load_state(self, state: StateLike, *, model: torch.nn.Module | None = None) -> None:
        """Load weights into the trainer's model (or ``model``), refusing another task spec.

        Raises:
            ModelMismatchError: keys or shapes differ from the spec's U-Net.
        """
        target = model or self.model
        try:
            target.load_state_dict(to_torch_state(state), strict=True)
        except RuntimeError as exc:
            raise ModelMismatchError(
                f"weights do not fit the U-Net of task spec {self.spec.spec_hash()}: "
                f"{str(exc).splitlines()[0]}"
            ) from exc

    def train_round(
        self,
        global_state: StateLike,
        config: TrainConfig,
        *,
        local_keys: Sequence[str] = (),
        personal_state: StateLike | None = None,
        tag: str = "run",
        round_: int = 1,
        total_rounds: int | None = None,
    ) -> TrainResult:
        """Train locally from the global model for one round, then update the personal model.

        The experiment's inside personalisation (``InsidePolicy``) decides the start state
        (FedBN: the site's own norm layers from ``personal_state``), the FedProx term, Ditto's
        second training loop, and the personal model kept afterwards (IOP-FL moving average,
        FedBN trained model, Ditto personal model).

        Args:
            global_state: the global model of the previous round.
            config: local epochs, batch size, optimiser, FedProx mu, personalisation.
            local_keys: keys the aggregator does not average (``TaskAssignment.local_keys``).
                Default ``()`` (the policy's own, for FedBN).
            personal_state: the personal model stored after this site's last round. Default
                None (first round).
            tag: TensorBoard run name, e.g. the experiment id. Default ``"run"``.
            round_: the federated round, for TensorBoard steps and the LR schedule. Default 1.
            total_rounds: rounds of the experiment (``TaskAssignment.total_rounds``), for the
                ``poly`` LR schedule. Default None (the schedule then stays constant).

        Returns:
            The trained state (to upload), sample count, metrics and the personal model to keep.

        Raises:
            ModelMismatchError: a state does not fit the spec's U-Net.
            TrainingError: empty split, a non-finite loss, or a personalisation refusal.
        """
        start = time.perf_counter()
        self._abort = False
        self.dp_sgd_spent = None
        self.total_rounds = total_rounds
        if len(self.train_data) == 0:  # type: ignore[arg-type]
            raise TrainingError("the training split is empty: no batch to train on")
        policy = InsidePolicy.from_train_config(config)
        global_t = to_torch_state(global_state)
        personal_t = to_torch_state(personal_state) if personal_state is not None else None
        keys = list(local_keys) or policy.local_keys(self.spec)
        try:
            self.load_state(policy.start_state(global_t, personal_t, local_keys=keys))
            anchor = anchor_params(self.model)
            mu = policy.fedprox_mu
            penalty = (lambda: proximal_term(self.model, anchor, mu)) if mu > 0 else None
            stats = self._fit(self.model, config, config.local_epochs, penalty, tag, round_)
            trained = cpu_state(self.model)
            if policy.trains_personal:
                personal_t = self._train_ditto(policy, personal_t, global_t, config, tag, round_)
            kept = policy.after_round(personal_t, trained, global_t)
        except PersonalizationError as exc:
            raise TrainingError(f"inside personalisation ({policy.method}) refused: {exc}") from exc
        seconds = time.perf_counter() - start
        metrics = SiteMetrics(train_loss=stats.mean_loss, train_seconds=seconds)
        if self.val_data is not None and len(self.val_data) > 0:  # type: ignore[arg-type]
            result = self.evaluate_model(self.model, self.val_data)
            metrics = result.as_site_metrics(train_loss=stats.mean_loss, train_seconds=seconds)
            self.run_log.round_metrics(tag, round_, result)
            metrics = with_global_and_personal_dice(
                self, metrics, global_state=global_t, personal_state=kept, trained_state=trained
            )
        if self.dp_sgd_spent is not None:
            metrics = metrics.model_copy(update={"dp_sgd": self.dp_sgd_spent})
        log.info(
            "round %d: %d steps, loss %.4f, %.1f s", round_, stats.steps, stats.mean_loss, seconds
        )
        n = len(self.train_data)  # type: ignore[arg-type]
        return TrainResult(trained, n, metrics, stats.steps, kept)

    def evaluate_state(self, state: StateLike, data: Dataset | None = None) -> EvalResult:
        """Evaluate given weights on ``data`` (default: the validation split)."""
        self.load_state(state)
        split = data if data is not None else self.val_data
        if split is None:
            raise TrainingError("no evaluation split was given to the trainer")
        return self.evaluate_model(self.model, split)

    def evaluate_model(self, model: torch.nn.Module, data: Any) -> EvalResult:
        """Dice per class, mean Dice and HD95 of ``model`` on ``data``.

        ``data`` is either a list of ``EvalCase`` (whole scans scored in their own geometry,
        ``site_agent.clinic.scan_evaluation``) or a dataset of items (``evaluate_segmentation``).
        """
        if isinstance(data, list):
            from site_agent.clinic.scan_evaluation import evaluate_cases

            return evaluate_cases(model, data, self.spec, device=self.device)
        return evaluate_segmentation(model, data, self.spec, device=self.device)

    def request_abort(self) -> None:
        """Ask the running ``train_round`` to stop after its current step."""
        self._abort = True

    def close(self) -> None:
        """Flush and close TensorBoard writers."""
        self.run_log.close()

    # -- internals --------------------------------------------------------------------------
    def _train_ditto(
        self,
        policy: InsidePolicy,
        personal: dict[str, torch.Tensor] | None,
        global_t: dict[str, torch.Tensor],
        config: TrainConfig,
        tag: str,
        round_: int,
    ) -> dict[str, torch.Tensor]:
        # Ditto's v trains beside the uploaded model, pulled towards the round's global model.
        model = build_unet(self.spec).to(self.device)
        self.load_state(policy.personal_start(personal, global_t) or global_t, model=model)
        anchor = {k: v.to(self.device) for k, v in global_t.items()}
        lam = policy.ditto_lambda
        self._fit(
            model,
            config,
            policy.ditto_epochs,
            lambda: ditto_penalty(model, anchor, lam),
            f"{tag}/ditto",
            round_,
        )
        return cpu_state(model)

    def _fit(
        self,
        model: torch.nn.Module,
        config: TrainConfig,
        epochs: int,
        penalty: Penalty | None,
        tag: str,
        round_: int,
    ) -> FitStats:
        from site_agent.training.batch_augment import BatchAugment

        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        fmt = memory_format(self.spec.spatial_dims, config.channels_last)
        model.to(memory_format=fmt)  # type: ignore[call-overload]  # torch stubs omit it
        loader = DataLoader(
            self.train_data,
            batch_size=config.batch_size,
            shuffle=True,
            generator=generator,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        base_step = (round_ - 1) * epochs
        steps = len(loader) * epochs
        if config.max_steps is not None:
            steps = min(steps, config.max_steps)
        lr_at = None
        if config.lr_schedule == LrSchedule.POLY and self.total_rounds:
            lr_at = poly_lr(
                config.lr, round_=round_, total_rounds=self.total_rounds, steps_per_round=steps
            )
        augment = None
        if self.spec.fit == InputFit.RESIZE:
            augment = BatchAugment(self.spec.spatial_dims, seed=config.seed)
        if config.dp_sgd is not None and model is self.model:
            return self._fit_private(model, config, loader, epochs, augment, lr_at, tag, round_)
        key = f"{tag}/{'ditto' if model is not self.model else 'main'}"
        ds = self._deep_supervision(model, config, key)
        optimizer = make_optimizer(model, config, ds.parameters() if ds else ())
        if config.persist_optimizer and key in self.optimizer_states:
            optimizer.load_state_dict(self.optimizer_states[key])
        loss = make_loss() if ds is None else ds.loss(make_loss())
        try:
            stats = fit(
                model,
                loader,
                optimizer,
                loss,
                device=self.device,
                epochs=epochs,
                max_steps=config.max_steps,
                penalty=penalty,
                should_stop=lambda: self._abort,
                on_epoch=lambda e, loss: self.run_log.epoch_loss(tag, base_step + e, loss),
                progress=self.progress,
                desc=f"{tag} round {round_}",
                bf16=use_bf16(config.precision, self.device),
                memory_format=fmt,
                batch_transform=augment,
                lr_at=lr_at,
            )
        finally:
            if ds is not None:
                ds.close()
                self.optimizer_states[f"{key}/heads"] = ds.state_dict()
        if config.persist_optimizer:
            self.optimizer_states[key] = optimizer.state_dict()
        return stats

    def _fit_private(
        self,
        model: torch.nn.Module,
        config: TrainConfig,
        loader: DataLoader,
        epochs: int,
        augment: Any,
        lr_at: Any,
        tag: str,
        round_: int,
    ) -> FitStats:
        """Sample-level DP-SGD of the uploaded model (``site_agent.training.variants.dp_sgd``; Opacus)."""
        from site_agent.training.variants.dp_sgd import check_config, fit_private

        assert config.dp_sgd is not None
        check_config(config)
        base_step = (round_ - 1) * epochs
        stats, self.dp_sgd_spent = fit_private(
            model,
            loader,
            make_optimizer(model, config),
            make_loss(),
            dp=config.dp_sgd,
            round_=round_,
            device=self.device,
            epochs=epochs,
            max_steps=config.max_steps,
            should_stop=lambda: self._abort,
            batch_transform=augment,
            lr_at=lr_at,
            on_epoch=lambda e, loss: self.run_log.epoch_loss(tag, base_step + e, loss),
        )
        return stats

    def _deep_supervision(self, model: torch.nn.Module, config: TrainConfig, key: str) -> Any:
        """The deep-supervision heads for ``model`` (restored from earlier rounds), or None."""
        if not config.deep_supervision:
            return None
        from site_agent.training.variants.deep_supervision import DeepSupervision

        ds = DeepSupervision(model, self.spec, config.deep_supervision, self.device)
        if f"{key}/heads" in self.optimizer_states:
            ds.load_state_dict(self.optimizer_states[f"{key}/heads"])
        return ds

    def __enter__(self) -> SiteTrainer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
