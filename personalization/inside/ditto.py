"""Ditto: a personal model v trained beside the global update, pulled towards the global model θ.

Li et al. 2021 ("Ditto: Fair and Robust Federated Learning Through Personalization"). Each round
the site trains the global model as usual (that is what it uploads) and, separately, takes steps
on its personal model v with the loss ``f(v) + λ/2·‖v − θ‖²``, θ being the global model the round
started from. v never leaves the site (unless shared for outside routing).

The site trainer's loop, per batch::

    anchor = anchor_params(global_model)          # once, right after loading θ
    ...
    ditto_personal_step(personal_model, anchor, lambda m: loss_fn(m(x), y), personal_opt, lam)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn

from personalization.errors import PersonalizationError
from personalization.inside.bounds import check_bound
from personalization.inside.fedprox import anchor_params, proximal_term

__all__ = ["anchor_params", "ditto_penalty", "ditto_personal_step"]


def ditto_penalty(
    personal_model: nn.Module, global_params: Mapping[str, torch.Tensor], lam: float
) -> torch.Tensor:
    """``λ/2 · ‖v − θ‖²`` over the personal model's trainable parameters.

    Its gradient with respect to v is ``λ·(v − θ)``; θ gets none.

    Args:
        personal_model: the personal model v.
        global_params: the global weights θ by parameter name. Example:
            ``anchor_params(global_model)`` taken at round start.
        lam: Ditto's λ ≥ 0. Example: ``0.1`` (``PersonalizationConfig.ditto_lambda``).

    Returns:
        A scalar tensor on v's device.

    Raises:
        PersonalizationError: ``lam`` is negative.
        StateDictError: θ lacks one of v's trainable parameters or has another shape.

    Example:
        >>> loss = loss_fn(personal_model(x), y) + ditto_penalty(personal_model, anchor, 0.1)
    """
    check_bound("ditto_lambda", lam, what="Ditto lambda")
    return proximal_term(personal_model, global_params, lam)


def ditto_personal_step(
    personal_model: nn.Module,
    global_params: Mapping[str, torch.Tensor],
    batch_loss_fn: Callable[[nn.Module], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    lam: float,
) -> float:
    """One optimiser step on the personal model v with the loss ``f(v) + λ/2·‖v − θ‖²``.

    Args:
        personal_model: the personal model v, in train mode; ``optimizer`` holds its parameters.
        global_params: θ by parameter name, fixed for the round. Example: ``anchor_params(model)``.
        batch_loss_fn: computes the task loss f(v) of the current batch with the model it is
            given. Example: ``lambda m: dice_ce(m(images), labels)``.
        optimizer: the personal model's own optimiser (not the global model's).
        lam: Ditto's λ ≥ 0. Example: ``0.1``.

    Returns:
        The task loss f(v) of this batch before the step (without the penalty), for logging.

    Raises:
        PersonalizationError: ``lam`` is negative, or the batch loss is not a finite scalar.
        StateDictError: θ does not match v's parameters.

    Example:
        >>> opt_v = torch.optim.SGD(personal_model.parameters(), lr=0.01)
        >>> for x, y in loader:
        ...     ditto_personal_step(personal_model, anchor, lambda m: loss_fn(m(x), y), opt_v, 0.1)
    """
    optimizer.zero_grad(set_to_none=True)
    task_loss = batch_loss_fn(personal_model)
    if task_loss.ndim != 0:
        raise PersonalizationError(
            f"batch_loss_fn must return a scalar, got shape {tuple(task_loss.shape)}"
        )
    value = float(task_loss.detach())
    if not math.isfinite(value):
        # A NaN step would poison v for every later round; refuse it at the source.
        raise PersonalizationError(f"Ditto personal loss is not finite ({value})")
    loss = task_loss + ditto_penalty(personal_model, global_params, lam)
    loss.backward()
    optimizer.step()
    return value
