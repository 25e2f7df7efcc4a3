"""FedBN: normalisation layers stay on the site, everything else is averaged.

Li et al. 2021 ("FedBN: Federated Learning on Non-IID Features via Local Batch Normalization").
The aggregator leaves the norm layers' keys out of the average (``TaskAssignment.local_keys``);
each site trains, in every round, the global weights with its own norm layers put back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from data_specs.task_spec import TaskSpec
from personalization.errors import StateDictError
from personalization.state_dict import StateDict, merge_state, norm_keys, norm_keys_for_spec


def fedbn_local_keys(spec_or_model: TaskSpec | nn.Module) -> list[str]:
    """The state-dict keys FedBN keeps on the site: every BatchNorm / InstanceNorm parameter and
    statistic (``running_mean``, ``running_var``, ``num_batches_tracked``).

    Args:
        spec_or_model: a task spec (its U-Net is built) or a model. Example:
            ``TaskSpec(norm="batch", channels=(4, 8), strides=(2,))``.

    Returns:
        The keys in state-dict order; no convolution or activation keys.

    Example:
        >>> assignment_local_keys = fedbn_local_keys(spec)
    """
    if isinstance(spec_or_model, TaskSpec):
        return norm_keys_for_spec(spec_or_model)
    if isinstance(spec_or_model, nn.Module):
        return norm_keys(spec_or_model)
    raise TypeError(f"expected a TaskSpec or a torch module, got {type(spec_or_model).__name__}")


def apply_fedbn(
    global_state: Mapping[str, torch.Tensor],
    local_state: Mapping[str, torch.Tensor] | None,
    local_keys: Iterable[str],
) -> StateDict:
    """The model a FedBN site trains in a round: the global weights except its own norm layers.

    Args:
        global_state: the global model received for the round.
        local_state: the site's model after its previous round, or None in its first round
            (then the global model is used as is).
        local_keys: the keys kept on the site. Example: ``fedbn_local_keys(spec)`` or the task's
            ``TaskAssignment.local_keys``.

    Returns:
        A new state dict in ``global_state``'s order (tensors shared, not copied), ready for
        ``model.load_state_dict``.

    Raises:
        StateDictError: ``local_state`` lacks a local key, or a key is not in the global model,
            or shapes or dtypes differ.

    Example:
        >>> model.load_state_dict(apply_fedbn(global_state, previous_local_state, keys))
    """
    keys = list(local_keys)
    if local_state is None:
        return dict(global_state)
    if missing := [k for k in keys if k not in local_state]:
        raise StateDictError(f"FedBN: the site's model lacks local keys {missing[:5]}")
    return merge_state(global_state, {k: local_state[k] for k in keys})
