"""Test-time adaptation of a routed model on a site's unlabelled scans.

Only the routers and the norm layers' affine parameters move; expert kernels are buffers and
never change. The objective (see ``losses``) is

    entropy_weight * entropy + consistency_weight * consistency(scan, augmented copy)
    + shape_weight * KL(class prior || predicted class proportions)
    + share_weight * log(predicted / prior foreground share)^2
    + anchor_weight * KL(initial mix || mix) + smoothness_weight * TV.

Labels are never read: a batch is a tensor of images or a mapping from which only ``"image"``
is taken. Runs are deterministic for ``AdaptConfig.seed`` (the global RNG is forked, seeded and
restored; augmentations draw from their own ``torch.Generator``).

torch is imported inside the functions, so ``AdaptConfig`` (and the package) load without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from personalization.outside.errors import RoutingError

if TYPE_CHECKING:
    import torch
    from torch import nn

NonNegative = Annotated[float, Field(ge=0.0)]


class AdaptConfig(BaseModel):
    """Settings of label-free test-time adaptation.

    Args:
        steps: optimiser steps (one batch each; the loader is cycled). Default ``50``.
        lr: Adam learning rate. Default ``1e-3``. Example: ``5e-3``.
        entropy_weight: weight of the mean per-voxel entropy. Default ``1.0``.
        consistency_weight: weight of the augmented-copy consistency; ``0`` skips the second
            forward pass. Default ``1.0``.
        shape_weight: weight of the class-proportion prior. Default ``1.0``.
        smoothness_weight: weight of the total-variation smoothness prior. Default ``0.0``.
        share_weight: weight of the foreground-share prior, which penalises a predicted
            foreground share that collapses or explodes against the class prior. Default
            ``1.0``.
        anchor_weight: weight of ``KL(initial mix || mix)`` over the routers (routed models
            only). Default ``1.0``.
        class_prior: expected class proportions (background first, sums to one); default
            ``None`` takes the proportions the unadapted model predicts on the first batch.
            Example: ``(0.95, 0.05)``.
        noise_std: augmentation noise relative to each image's standard deviation.
            Default ``0.1``.
        batch_norm_stats: BatchNorm layers normalise with batch statistics while adapting and
            update their running estimates (so eval mode afterwards uses the site's
            statistics); ``False`` keeps the global model's. No effect on instance norm.
            Default ``True``.
        seed: seed of the whole run. Default ``0``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: Annotated[int, Field(ge=1, le=100_000)] = 50
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-3
    entropy_weight: NonNegative = 1.0
    consistency_weight: NonNegative = 1.0
    shape_weight: NonNegative = 1.0
    smoothness_weight: NonNegative = 0.0
    share_weight: NonNegative = 1.0
    anchor_weight: NonNegative = 1.0
    class_prior: tuple[float, ...] | None = None
    noise_std: Annotated[float, Field(ge=0.0, le=10.0)] = 0.1
    batch_norm_stats: bool = True
    seed: int = 0


class StepLosses(BaseModel):
    """Unweighted loss terms of one step and their weighted total (0 where a term is off)."""

    total: float
    entropy: float
    consistency: float
    shape: float
    smoothness: float
    share: float = 0.0
    anchor: float = 0.0


class AdaptReport(BaseModel):
    """What an adaptation run did.

    Args:
        method: ``"routing"`` (``adapt``) or ``"tent"`` (``tent_adapt``).
        steps: optimiser steps taken.
        images: scans seen (with repetition when the loader was cycled).
        seconds: wall-clock time of the run.
        losses: one ``StepLosses`` per step, before that step's update.
        class_prior: the class proportions the shape term pulled towards.
        mean_mix: per routed layer, the mixing weights of the last step's forward pass on the
            scans (before that step's update), averaged over its batch (empty for TENT).
    """

    method: Literal["routing", "tent"]
    steps: int
    images: int
    seconds: float
    losses: list[StepLosses]
    class_prior: list[float]
    mean_mix: dict[str, list[float]] = Field(default_factory=dict)


def image_batches(loader: Iterable[Any], spatial_dims: int) -> Iterator[torch.Tensor]:
    """Yield image batches forever, cycling ``loader``; only ``"image"`` is read from a mapping.

    Args:
        loader: re-iterable of ``(B, C, *spatial)`` tensors or dicts with an ``"image"`` key
            (e.g. a MONAI ``DataLoader``). Example: ``[{"image": torch.zeros(2, 1, 32, 32)}]``.
        spatial_dims: 2 or 3, to check batch shapes.

    Raises:
        RoutingError: a batch without ``"image"``, of the wrong rank, or a loader that
            yields nothing.
    """
    import torch

    while True:
        produced = False
        for batch in loader:
            image = batch["image"] if isinstance(batch, Mapping) and "image" in batch else batch
            if not isinstance(image, torch.Tensor):
                raise RoutingError(
                    f"expected a tensor or a mapping with an 'image' tensor, got {type(batch).__name__}"
                )
            if image.dim() != spatial_dims + 2:
                raise RoutingError(
                    f"expected image batches (B, C, {'D, ' if spatial_dims == 3 else ''}H, W), "
                    f"got shape {tuple(image.shape)}"
                )
            produced = True
            # MONAI MetaTensor -> plain tensor: no metadata tracking through rot90 and friends.
            yield image.as_tensor() if hasattr(image, "as_tensor") else image
        if not produced:
            raise RoutingError(
                "the loader yielded no images (an exhausted generator cannot be cycled)"
            )


def run_adaptation(
    model: nn.Module,
    params: Sequence[nn.Parameter],
    loader: Iterable[Any],
    config: AdaptConfig,
    *,
    spatial_dims: int,
    out_channels: int | None,
    monitor: Callable[[int, StepLosses], bool] | None = None,
) -> tuple[list[StepLosses], list[float], int, float]:
    """The shared optimisation loop of ``adapt`` and ``tent_adapt``.

    Args:
        model: the network; put in eval mode, with BatchNorm layers in train mode when
            ``config.batch_norm_stats`` (or when they keep no running statistics).
        params: what the optimiser moves; nothing else should require gradients.
        loader: see ``image_batches``.
        config: the settings.
        spatial_dims: 2 or 3, to check batch shapes.
        out_channels: number of classes, to check ``config.class_prior``; ``None`` skips it.
        monitor: called after every step with the step index and its losses; returning
            ``True`` stops the run there (early stopping). Default ``None``.

    Returns:
        ``(losses per step, class prior, images seen, seconds)``; the model is left in eval
        mode, also when this raises.

    Raises:
        RoutingError: bad batches or ``class_prior``, or a non-finite loss (diverged).
    """
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm

    from personalization.outside.losses import (
        anchor_loss,
        class_proportions,
        consistency_loss,
        entropy_loss,
        proportion_prior_loss,
        share_prior_loss,
        smoothness_loss,
    )
    from personalization.outside.views import random_view

    if (
        config.class_prior is not None
        and out_channels is not None
        and len(config.class_prior) != out_channels
    ):
        raise RoutingError(
            f"class_prior needs {out_channels} entries (one per class), got {len(config.class_prior)}"
        )
    device = next(iter(model.state_dict().values())).device
    fork = [device.index or 0] if device.type == "cuda" else []
    started = time.perf_counter()
    history: list[StepLosses] = []
    seen = 0
    prior = None if config.class_prior is None else torch.tensor(config.class_prior, device=device)
    with torch.random.fork_rng(devices=fork):
        torch.manual_seed(config.seed)
        generator = torch.Generator(device=device).manual_seed(config.seed)
        optimizer = torch.optim.Adam(params, lr=config.lr)
        model.eval()
        for m in model.modules():
            if isinstance(m, _BatchNorm) and (config.batch_norm_stats or m.running_mean is None):
                m.train()
        batches = image_batches(loader, spatial_dims)
        routed = list(getattr(model, "routed_layers", dict)().values())
        initial_mix: list[torch.Tensor] | None = None
        try:
            for step in range(config.steps):
                x = next(batches).to(device=device, dtype=torch.float32)
                seen += x.shape[0]
                zero = x.new_zeros(())
                cons = shape = smooth = share = anchor = zero
                back = None
                if config.consistency_weight > 0:
                    # The augmented copy runs first, so the routers' last_mix is the scan's own.
                    view = random_view(x, generator, config.noise_std)
                    back = view.invert(torch.softmax(model(view.apply(x)), dim=1))
                logits = model(x)
                probs = torch.softmax(logits, dim=1)
                if prior is None:
                    prior = class_proportions(probs).detach()
                ent = entropy_loss(logits)
                if back is not None:
                    cons = consistency_loss(probs, back)
                if config.shape_weight > 0:
                    shape = proportion_prior_loss(probs, prior)
                if config.smoothness_weight > 0:
                    smooth = smoothness_loss(probs)
                if config.share_weight > 0:
                    share = share_prior_loss(probs, prior)
                mixes = [m.live_mix for m in routed if m.live_mix is not None]
                if config.anchor_weight > 0 and mixes:
                    if initial_mix is None:  # the mix the routers start from
                        initial_mix = [m.detach().mean(dim=0) for m in mixes]
                    anchor = anchor_loss(mixes, initial_mix)
                total = (
                    config.entropy_weight * ent
                    + config.consistency_weight * cons
                    + config.shape_weight * shape
                    + config.smoothness_weight * smooth
                    + config.share_weight * share
                    + config.anchor_weight * anchor
                )
                if not torch.isfinite(total):
                    raise RoutingError(
                        f"adaptation diverged at step {step}: loss is {float(total.detach())} (non-finite "
                        f"images, or lr {config.lr} too high); earlier steps' updates are kept"
                    )
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                history.append(
                    StepLosses(
                        total=float(total.detach()),
                        entropy=float(ent.detach()),
                        consistency=float(cons.detach()),
                        shape=float(shape.detach()),
                        smoothness=float(smooth.detach()),
                        share=float(share.detach()),
                        anchor=float(anchor.detach()),
                    )
                )
                if monitor is not None and monitor(step, history[-1]):
                    break
        finally:
            model.eval()
            for m in routed:
                m.live_mix = None
    assert prior is not None
    return history, [float(p) for p in prior.cpu()], seen, time.perf_counter() - started


def adapt(
    routed_model: Any,
    loader: Iterable[Any],
    config: AdaptConfig | None = None,
    *,
    monitor: Callable[[int, StepLosses], bool] | None = None,
) -> AdaptReport:
    """Adapt a routed model's routers and norm affine parameters to unlabelled scans, in place.

    Args:
        routed_model: a ``RoutedUNet`` (``build_routed_model`` or ``load_routed``).
        loader: re-iterable of image batches ``(B, C, *spatial)`` or dicts from which only
            ``"image"`` is read (labels, if present, are ignored). Example: a MONAI
            ``DataLoader`` over the site's unlabelled test scans.
        config: settings; default ``AdaptConfig()``.
        monitor: see ``run_adaptation`` (early stopping). Default ``None``.

    Returns:
        The report (losses per step, seconds, final mixing weights). The model is left in eval
        mode; save it with ``save_routed``.

    Raises:
        RoutingError: a loader without images, badly shaped batches, or a bad ``class_prior``.
    """
    from personalization.outside.routed import RoutedUNet

    if not isinstance(routed_model, RoutedUNet):
        raise RoutingError(f"adapt needs a RoutedUNet, got {type(routed_model).__name__}")
    config = config or AdaptConfig()
    losses, prior, seen, seconds = run_adaptation(
        routed_model,
        routed_model.adaptable_parameters(),
        loader,
        config,
        spatial_dims=routed_model.spec.spatial_dims,
        out_channels=routed_model.spec.out_channels,
        monitor=monitor,
    )
    return AdaptReport(
        method="routing",
        steps=len(losses),
        images=seen,
        seconds=round(seconds, 4),
        losses=losses,
        class_prior=prior,
        mean_mix=routed_model.mean_mix(),
    )
