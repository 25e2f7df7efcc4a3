"""FedProx: the proximal term μ/2·Σ‖w − w_g‖² that keeps local training near the global model.

Li et al. 2020 ("Federated Optimization in Heterogeneous Networks"). The site trainer takes an
anchor of the global weights once per round (``anchor_params``) and adds ``proximal_term`` to
every batch loss. Ditto's penalty is the same term on the personal model.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from personalization.errors import StateDictError
from personalization.inside.bounds import check_bound


def anchor_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of a model's trainable parameters, on their devices: the proximal anchor.

    Take it right after loading the global model, before the first optimiser step.

    Args:
        model: the model holding the global weights. Example: the site's U-Net after
            ``load_state_dict(global_state)``.

    Returns:
        ``{parameter name: tensor}`` that no optimiser step will change.

    Example:
        >>> anchor = anchor_params(model)
        >>> loss = loss_fn(model(x), y) + proximal_term(model, anchor, mu=0.01)
    """
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def proximal_term(
    model: nn.Module, global_params: Mapping[str, torch.Tensor], mu: float
) -> torch.Tensor:
    """``μ/2 · Σ‖w − w_g‖²`` over the model's trainable parameters.

    Gradients flow into the model's parameters only; the global parameters are detached and
    moved to each parameter's device and dtype (a no-op for an ``anchor_params`` anchor).

    Args:
        model: the model being trained (weights w).
        global_params: the global weights w_g by parameter name; a full state dict works too
            (buffers are ignored). Example: ``anchor_params(model)`` taken at round start.
        mu: proximal strength μ ≥ 0; 0 returns a zero tensor. Example: ``0.01``
            (``TrainConfig.fedprox_mu``).

    Returns:
        A scalar tensor on the model's device, to add to the batch loss.

    Raises:
        PersonalizationError: ``mu`` is negative.
        StateDictError: a trainable parameter is missing from ``global_params`` or has another
            shape.

    Example:
        >>> loss = loss_fn(model(x), y) + proximal_term(model, anchor, mu=0.01)
    """
    check_bound("fedprox_mu", mu, what="proximal strength mu")
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    device = params[0][1].device if params else torch.device("cpu")
    if mu == 0 or not params:
        return torch.zeros((), device=device)
    total = torch.zeros((), device=device, dtype=torch.float32)
    for name, w in params:
        if name not in global_params:
            raise StateDictError(
                f"proximal term: parameter {name} is missing from the global weights"
            )
        g = global_params[name]
        if tuple(g.shape) != tuple(w.shape):
            raise StateDictError(
                f"proximal term: {name} has shape {tuple(w.shape)} in the model, "
                f"{tuple(g.shape)} in the global weights"
            )
        g = g.detach().to(device=w.device, dtype=w.dtype)
        total = total + (w - g).pow(2).sum().float()
    return total * (mu / 2.0)
