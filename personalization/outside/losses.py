"""Label-free objectives of test-time adaptation, each a mean over batch and voxels.

- ``entropy_loss``: Shannon entropy of the per-voxel class distribution (nats), averaged over
  batch and voxels (the reference sums over the batch, which ties the step size to batch size).
- ``consistency_loss``: mean squared difference between the soft prediction of a scan and the
  prediction of an augmented copy mapped back to the scan's frame.
- ``proportion_prior_loss``: the shape term. ``KL(prior || mean predicted class proportions)``;
  entropy minimisation alone is happy to grow the dominant class (background) until the organ
  disappears, and this term makes a batch whose predicted foreground shrinks pay for it.
- ``smoothness_loss``: optional total variation of the soft masks (off by default).
"""

from __future__ import annotations

import torch

_EPS = 1e-8


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean per-voxel entropy of ``softmax(logits)``.

    Args:
        logits: ``(B, C, *spatial)`` network output. Example: ``model(images)``.

    Returns:
        A scalar: 0 for one-hot predictions, ``log C`` for uniform ones.
    """
    log_p = torch.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


def consistency_loss(probs: torch.Tensor, probs_view_back: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of two soft predictions in the same frame.

    Args:
        probs: ``(B, C, *spatial)`` softmax of the scan's prediction.
        probs_view_back: softmax of the augmented copy's prediction, already inverted
            (``View.invert``) to the scan's frame.

    Returns:
        A scalar, 0 when the two agree everywhere.
    """
    return (probs - probs_view_back).pow(2).mean()


def class_proportions(probs: torch.Tensor) -> torch.Tensor:
    """Mean soft class proportions ``(C,)`` over batch and voxels of ``probs`` ``(B, C, ...)``."""
    return probs.transpose(0, 1).flatten(1).mean(dim=1)


def proportion_prior_loss(probs: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """``KL(prior || predicted proportions)``: the class-proportion shape prior.

    Args:
        probs: ``(B, C, *spatial)`` softmax predictions.
        prior: ``(C,)`` expected class proportions (summing to one). Example:
            ``torch.tensor([0.9, 0.1])``.

    Returns:
        A scalar >= 0, growing without bound as a prior-supported class vanishes.
    """
    prior = prior.to(probs).clamp_min(_EPS)
    prior = prior / prior.sum()
    pred = class_proportions(probs).clamp_min(_EPS)
    return (prior * (prior.log() - pred.log())).sum()


def smoothness_loss(probs: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of the soft masks: mean absolute neighbour difference.

    Args:
        probs: ``(B, C, *spatial)`` softmax predictions.

    Returns:
        A scalar, averaged over spatial axes.
    """
    terms = [probs.diff(dim=d).abs().mean() for d in range(2, probs.dim())]
    return torch.stack(terms).mean()
