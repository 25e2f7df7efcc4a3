"""Batch-norm statistics for an outside site: the stored ones, the site's own, or a mix.

A model trained elsewhere normalises with running statistics of the training sites
(``stored``). An outside scanner shifts those statistics; re-estimating them on the site's own
scans (``site``, AdaBN: one pass in train mode with a cumulative average, no gradients) undoes
much of that shift, and ``mix`` interpolates the two. Which suits a site is decided label-free
(``personalization.outside.site_score``). Models without batch norm have one mode only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

BnMode = Literal["stored", "site", "mix"]
BN_MODES: tuple[BnMode, ...] = ("stored", "site", "mix")

# name -> (running_mean, running_var)
BnStats = dict[str, tuple[torch.Tensor, torch.Tensor]]


def batch_norms(model: nn.Module) -> dict[str, _BatchNorm]:
    """Every batch-norm layer that keeps running statistics, by module name."""
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, _BatchNorm) and m.running_mean is not None and m.running_var is not None
    }


def read_stats(model: nn.Module) -> BnStats:
    """A copy of every batch-norm layer's running mean and variance."""
    return {
        n: (m.running_mean.detach().clone(), m.running_var.detach().clone())  # type: ignore[union-attr]
        for n, m in batch_norms(model).items()
    }


def write_stats(model: nn.Module, stats: BnStats) -> None:
    """Copy running statistics (``read_stats`` output) into the model's batch-norm layers."""
    with torch.no_grad():
        for n, m in batch_norms(model).items():
            mean, var = stats[n]
            m.running_mean.copy_(mean)  # type: ignore[union-attr]
            m.running_var.copy_(var)  # type: ignore[union-attr]


def estimate_site_stats(model: nn.Module, batches: Sequence[torch.Tensor]) -> BnStats:
    """Running statistics of the site's scans (AdaBN), leaving the model as it was.

    Args:
        model: any network; only its batch-norm buffers are touched, and restored.
        batches: image batches ``(B, C, *spatial)`` of the site. Example: ``[torch.randn(4, 1,
            32, 32)]``.

    Returns:
        The site's statistics; the stored ones when the model has no batch norm.
    """
    norms = batch_norms(model)
    stored = read_stats(model)
    if not norms or not batches:
        return stored
    was_training = model.training
    momenta = {n: m.momentum for n, m in norms.items()}
    device = next(iter(model.state_dict().values())).device
    try:
        model.eval()
        for m in norms.values():
            m.reset_running_stats()
            m.momentum = None  # cumulative average over every batch
            m.train()
        with torch.no_grad():
            for x in batches:
                model(x.to(device=device, dtype=torch.float32))
        site = read_stats(model)
    finally:
        for n, m in norms.items():
            m.momentum = momenta[n]
        write_stats(model, stored)
        model.train(was_training)
    return site


def mixed_stats(stored: BnStats, site: BnStats, weight: float = 0.5) -> BnStats:
    """``(1 - weight) * stored + weight * site``, per layer, for mean and variance."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the mix weight must lie in [0, 1], got {weight}")
    return {
        n: (
            (1 - weight) * stored[n][0] + weight * site[n][0],
            (1 - weight) * stored[n][1] + weight * site[n][1],
        )
        for n in stored
    }


def stats_for(mode: BnMode, stored: BnStats, site: BnStats, weight: float = 0.5) -> BnStats:
    """The statistics of one mode (see the module docstring)."""
    if mode == "stored":
        return stored
    if mode == "site":
        return site
    return mixed_stats(stored, site, weight)
