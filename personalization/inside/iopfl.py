"""IOP-FL inside personalisation: each site's personal model is a moving average of its local models.

After round t a site holds the global model θ it started from, its locally trained model W and
its personal model P from round t−1. The update (Jiang et al. 2022, arXiv 2204.08467) is

    P ← α·P + (1−α)·W  =  P + (1−α)·[(θ − P) + (W − θ)]

the second form reading as a step of the personal model towards the global model plus the
round's local update. In the first round P = W. Norm-layer statistics are part of P.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from personalization.inside.bounds import check_bound
from personalization.state_dict import StateDict, is_mixable, require_same_layout


def update_personal(
    personal: Mapping[str, torch.Tensor] | None, local: Mapping[str, torch.Tensor], alpha: float
) -> StateDict:
    """IOP-FL's personal-model update ``P ← α·P + (1−α)·W``.

    Float tensors (weights and norm statistics) are mixed; integer buffers such as
    ``num_batches_tracked`` take the local model's value. Inputs are not modified.

    Args:
        personal: the personal model P of the previous round, or None in a site's first round
            (then P = W).
        local: the locally trained model W of this round.
        alpha: weight of the old personal model, in [0, 1]; 0 gives W, 1 keeps P.
            Example: ``0.1`` (``PersonalizationConfig.alpha``'s default).

    Returns:
        New, detached tensors on ``local``'s devices.

    Raises:
        PersonalizationError: ``alpha`` outside [0, 1].
        StateDictError: P and W differ in keys, shapes or dtypes.

    Example:
        >>> personal = update_personal(personal, model.state_dict(), alpha=0.1)
    """
    _check_alpha(alpha)
    if personal is None:
        return _fresh(local)
    require_same_layout(personal, local, what="IOP-FL personal (P) and local (W) models")
    with torch.no_grad():
        return {k: _mix(personal[k], w, alpha) for k, w in local.items()}


def update_personal_decomposed(
    personal: Mapping[str, torch.Tensor] | None,
    local: Mapping[str, torch.Tensor],
    global_: Mapping[str, torch.Tensor],
    alpha: float,
) -> StateDict:
    """The same update written as ``P + (1−α)·[(θ − P) + (W − θ)]``.

    Equal to ``update_personal`` up to float rounding; kept because it shows where the step comes
    from (the pull towards the global model θ plus the round's local update W − θ) and to test
    the identity.

    Args:
        personal: the personal model P, or None in the first round (then P = W).
        local: the locally trained model W.
        global_: the global model θ this round's training started from.
        alpha: weight of the old personal model, in [0, 1]. Example: ``0.1``.

    Returns:
        New, detached tensors on ``local``'s devices; integer buffers take W's value.

    Raises:
        PersonalizationError: ``alpha`` outside [0, 1].
        StateDictError: P, W and θ differ in keys, shapes or dtypes.

    Example:
        >>> personal = update_personal_decomposed(personal, local_state, global_state, 0.1)
    """
    _check_alpha(alpha)
    require_same_layout(global_, local, what="IOP-FL global (θ) and local (W) models")
    if personal is None:
        return _fresh(local)
    require_same_layout(personal, local, what="IOP-FL personal (P) and local (W) models")
    out: StateDict = {}
    with torch.no_grad():
        for key, w in local.items():
            w = w.detach()
            if not is_mixable(w):
                out[key] = w.clone()
                continue
            p = personal[key].detach().to(w.device)
            theta = global_[key].detach().to(w.device)
            step = (theta - p) + (w - theta)
            out[key] = p + (1.0 - alpha) * step
    return out


def _mix(p: torch.Tensor, w: torch.Tensor, alpha: float) -> torch.Tensor:
    w = w.detach()
    if not is_mixable(w):
        return w.clone()
    p = p.detach().to(w.device)
    # Written as α·P + (1−α)·W, not lerp, so that α=0 gives W and α=1 gives P exactly.
    if w.dtype in (torch.float16, torch.bfloat16):
        mixed = torch.add(p.float() * alpha, w.float(), alpha=1.0 - alpha)
        return mixed.to(w.dtype)
    return torch.add(p * alpha, w, alpha=1.0 - alpha)


def _fresh(state: Mapping[str, torch.Tensor]) -> StateDict:
    # A copy, so that training the model further does not change the stored personal model.
    return {k: v.detach().clone() for k, v in state.items()}


def _check_alpha(alpha: float) -> None:
    check_bound("alpha", alpha, what="IOP-FL alpha")
