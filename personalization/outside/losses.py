"""Label-free objectives of test-time adaptation, each a mean over batch and voxels.

- ``entropy_loss``: Shannon entropy of the per-voxel class distribution (nats), averaged over
  batch and voxels (the reference sums over the batch, which ties the step size to batch size).
- ``consistency_loss``: mean squared difference between the soft prediction of a scan and the
  prediction of an augmented copy mapped back to the scan's frame.
- ``proportion_prior_loss``: the shape term. ``KL(prior || mean predicted class proportions)``;
  entropy minimisation alone is happy to grow the dominant class (background) until the organ
  disappears, and this term makes a batch whose predicted foreground shrinks pay for it.
- ``smoothness_loss``: optional total variation of the soft masks (off by default).
- ``share_prior_loss``: the squared log-ratio of the predicted to the expected foreground
  share. Symmetric: a foreground that collapses to a tenth of the prior pays what one that
  grows tenfold pays, where the KL term above barely notices an explosion.
- ``anchor_loss``: ``KL(initial mix || current mix)`` of the routers, so that entropy
  minimisation cannot drive every router to one expert (or away from all of them).
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


def foreground_share(probs: torch.Tensor) -> torch.Tensor:
    """Mean soft foreground share (everything but class 0) of ``probs`` ``(B, C, ...)``."""
    return 1.0 - class_proportions(probs)[0]


def share_prior_loss(probs: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """``log(predicted foreground share / prior foreground share) ** 2``.

    Args:
        probs: ``(B, C, *spatial)`` softmax predictions.
        prior: ``(C,)`` expected class proportions, background first. Example:
            ``torch.tensor([0.9, 0.1])``.

    Returns:
        A scalar >= 0: 0 at the prior's share, ``log(10) ** 2`` at a tenth or ten times it.
    """
    prior = prior.to(probs).clamp_min(_EPS)
    prior_fg = (1.0 - prior[0] / prior.sum()).clamp_min(_EPS)
    pred_fg = foreground_share(probs).clamp_min(_EPS)
    return (pred_fg.log() - prior_fg.log()).pow(2)


def anchor_loss(mixes: list[torch.Tensor], initial: list[torch.Tensor]) -> torch.Tensor:
    """Mean over routed layers of ``KL(initial || mix)``, averaged over the batch.

    Args:
        mixes: per routed layer, the ``(B, E)`` mixing weights of this forward pass (with
            their graph). Example: ``[layer.live_mix for layer in model.routed_layers().values()]``.
        initial: per layer, the ``(E,)`` or ``(B, E)`` mix the routers started from (the
            uniform 1/E for a fresh routed model).

    Returns:
        A scalar >= 0, 0 while every router keeps its initial mix.
    """
    if not mixes:
        raise ValueError("anchor_loss needs at least one routed layer's mix")
    terms = []
    for mix, start in zip(mixes, initial, strict=True):
        start = start.to(mix).clamp_min(_EPS)
        terms.append((start * (start.log() - mix.clamp_min(_EPS).log())).sum(dim=-1).mean())
    return torch.stack(terms).mean()
