"""A label-free score of a model on a site's scans: confident, self-consistent, plausible.

An outside site has no labels, so candidates (global model, single experts, the routed model,
each with its batch-norm statistics choice) are compared by what their predictions show:

- ``consistency``: soft Dice of the foreground classes between the prediction on the scans and
  the prediction on the scans flipped along every spatial axis (mapped back), pooled over all
  scans. A model that predicts nothing scores 0, not 1: an empty mask is not evidence.
- ``entropy``: mean per-voxel entropy divided by ``log C`` (0 confident, 1 uniform).
- ``score = consistency - entropy`` (higher is better).
- ``fg_share`` and ``class_shares``: the predicted (argmax) foreground share and the soft class
  proportions, for the collapse/explosion checks and the label-free class prior.
- ``agreement`` (``agreement``): Dice of the argmax masks of the foreground classes between a
  model's prediction and the federation's consensus (the mean prediction of its unadapted
  models).
  Adaptation minimises entropy and maximises consistency, so the score above flatters an
  adapted model; agreement with models that did not adapt is what it cannot game.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from pydantic import BaseModel
from torch import nn

_EPS = 1e-6


class SiteScore(BaseModel):
    """What ``score_model`` measured (see the module docstring)."""

    score: float
    consistency: float
    entropy: float
    fg_share: float
    class_shares: list[float]
    agreement: float | None = None


def score_model(model: nn.Module, batches: Sequence[torch.Tensor]) -> SiteScore:
    """Score ``model`` (eval mode, no gradients) on the site's image batches.

    Args:
        model: a network returning logits ``(B, C, *spatial)``; left in eval mode.
        batches: image batches ``(B, C_in, *spatial)``. Example: ``[torch.randn(4, 1, 32, 32)]``.

    Raises:
        ValueError: no batches.
    """
    if not batches:
        raise ValueError("score_model needs at least one batch of scans")
    device = next(iter(model.state_dict().values())).device
    model.eval()
    inter = total = None
    entropy_sum = 0.0
    voxels = 0
    fg_voxels = 0
    class_sum = None
    with torch.no_grad():
        for x in batches:
            x = x.to(device=device, dtype=torch.float32)
            dims = tuple(range(2, x.dim()))
            logits = model(x)
            probs = torch.softmax(logits, dim=1)
            back = torch.softmax(model(torch.flip(x, dims)), dim=1).flip(dims)
            c = probs.shape[1]
            log_p = torch.log_softmax(logits, dim=1)
            entropy_sum += float(-(probs * log_p).sum(dim=1).sum()) / math.log(max(c, 2))
            n = probs[:, 0].numel()
            voxels += n
            fg_voxels += int((probs.argmax(dim=1) > 0).sum())
            per_class = probs.transpose(0, 1).flatten(1).sum(dim=1)
            class_sum = per_class if class_sum is None else class_sum + per_class
            p, q = probs[:, 1:].transpose(0, 1).flatten(1), back[:, 1:].transpose(0, 1).flatten(1)
            i, t = (p * q).sum(dim=1), (p + q).sum(dim=1)
            inter = i if inter is None else inter + i
            total = t if total is None else total + t
    assert inter is not None and total is not None and class_sum is not None
    dice = (2 * inter / total.clamp_min(_EPS)).where(total > _EPS, torch.zeros_like(inter))
    consistency = float(dice.mean()) if dice.numel() else 0.0
    entropy = entropy_sum / max(voxels, 1)
    return SiteScore(
        score=round(consistency - entropy, 6),
        consistency=round(consistency, 6),
        entropy=round(entropy, 6),
        fg_share=round(fg_voxels / max(voxels, 1), 6),
        class_shares=[round(float(v), 6) for v in class_sum / max(voxels, 1)],
    )


def batches_of(images: Sequence[torch.Tensor], batch_size: int = 8) -> list[torch.Tensor]:
    """Regroup single images ``(1, C, ...)`` or batches into batches of up to ``batch_size``
    images of one shape (scans of different sizes go into different batches), in order."""
    singles = [x[i : i + 1] for x in images for i in range(x.shape[0])]
    out: list[torch.Tensor] = []
    run: list[torch.Tensor] = []
    for x in singles:
        if run and (len(run) == batch_size or run[0].shape != x.shape):
            out.append(torch.cat(run))
            run = []
        run.append(x)
    if run:
        out.append(torch.cat(run))
    return out


def predictions(model: nn.Module, batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Softmax predictions of ``model`` (eval mode, no gradients) per batch, on the CPU."""
    device = next(iter(model.state_dict().values())).device
    model.eval()
    with torch.no_grad():
        return [
            torch.softmax(model(x.to(device=device, dtype=torch.float32)), dim=1).cpu()
            for x in batches
        ]


def agreement(probs: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> float:
    """Dice of the argmax masks of two lists of predictions ``(B, C, ...)``, pooled over the
    batches and averaged over the foreground classes (0 for a class neither predicts).

    Hard masks, not probabilities: a soft Dice grows with confidence alone, which adaptation
    (entropy minimisation) would buy without agreeing any better.

    Args:
        probs: a model's predictions per batch (``predictions``).
        reference: the consensus per batch, same shapes. Example: the mean of several
            models' ``predictions``.
    """
    inter = total = None
    for p, q in zip(probs, reference, strict=True):
        c = p.shape[1]
        a = torch.nn.functional.one_hot(p.argmax(dim=1), c).movedim(-1, 1)[:, 1:]
        b = torch.nn.functional.one_hot(q.argmax(dim=1), c).movedim(-1, 1)[:, 1:]
        a, b = a.transpose(0, 1).flatten(1).float(), b.transpose(0, 1).flatten(1).float()
        i, t = (a * b).sum(dim=1), (a + b).sum(dim=1)
        inter = i if inter is None else inter + i
        total = t if total is None else total + t
    if inter is None or total is None or not inter.numel():
        return 0.0
    dice = (2 * inter / total.clamp_min(_EPS)).where(total > _EPS, torch.zeros_like(inter))
    return round(float(dice.mean()), 6)
