"""State-dict split, merge and arithmetic, and the policy data of which keys are normalisation layers.

The aggregator does not import this module (it takes the FedBN ``local_keys`` from
``data_specs.weights.unet_layout.norm_keys_of``, without torch); MONAI is loaded only when a U-Net is built.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from personalization.errors import StateDictError

if TYPE_CHECKING:
    from data_specs.task_spec import TaskSpec

StateDict = dict[str, torch.Tensor]

# Found by type, never by name: a U-Net's PReLU is also called ``...A.weight``.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LazyBatchNorm1d,
    nn.LazyBatchNorm2d,
    nn.LazyBatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LazyInstanceNorm1d,
    nn.LazyInstanceNorm2d,
    nn.LazyInstanceNorm3d,
)


def norm_keys(model: nn.Module) -> list[str]:
    """State-dict keys of every BatchNorm / InstanceNorm layer of a model, in state-dict order.

    Covers affine parameters and persistent buffers (``running_mean``, ``running_var``,
    ``num_batches_tracked``) of 1d, 2d and 3d layers, found by module type.

    Args:
        model: any torch module. Example: ``build_unet(TaskSpec(norm="batch"))``.

    Returns:
        The keys, e.g. ``["model.0.conv.unit0.adn.N.weight", ..., "...N.num_batches_tracked"]``.
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    keys = []
    for key in model.state_dict():
        owner = key.rpartition(".")[0]
        if isinstance(modules.get(owner), NORM_TYPES):
            keys.append(key)
    return keys


def norm_keys_for_spec(spec: TaskSpec) -> list[str]:
    """``norm_keys`` of the U-Net a task spec builds (cached per spec).

    Args:
        spec: the task spec. Example: ``TaskSpec(spatial_dims=3, norm="instance",
            patch_size=(32, 32, 32))``.

    Returns:
        A fresh list of the norm layers' state-dict keys.
    """
    return list(_norm_keys_cached(spec))


@functools.lru_cache(maxsize=32)
def _norm_keys_cached(spec: TaskSpec) -> tuple[str, ...]:
    from data_specs.task_spec import build_unet

    return tuple(norm_keys(build_unet(spec)))


def split_state(
    state: Mapping[str, torch.Tensor], keys: Iterable[str], *, strict: bool = True
) -> tuple[StateDict, StateDict]:
    """Split a state dict into the entries named by ``keys`` and the rest. Tensors are not copied.

    Args:
        state: a state dict.
        keys: keys to take out. Example: ``norm_keys(model)``.
        strict: refuse keys that ``state`` does not hold. Default True.

    Returns:
        ``(kept, rest)``, both in ``state``'s order.

    Raises:
        StateDictError: ``strict`` and some key is not in ``state``.

    Example:
        >>> local, shared = split_state(model.state_dict(), norm_keys(model))
    """
    wanted = set(keys)
    if strict and (unknown := wanted.difference(state)):
        raise StateDictError(f"split_state: keys not in the state dict: {_show(unknown)}")
    kept = {k: v for k, v in state.items() if k in wanted}
    rest = {k: v for k, v in state.items() if k not in wanted}
    return kept, rest


def merge_state(
    base: Mapping[str, torch.Tensor], override: Mapping[str, torch.Tensor]
) -> StateDict:
    """A new state dict: ``base`` with the entries of ``override`` replacing its own.

    Args:
        base: the full state dict. Example: the global model's.
        override: some of its keys with new values, same shapes and dtypes. Example: a site's
            norm layers.

    Returns:
        A new dict in ``base``'s order; tensors are shared with the inputs, not copied.

    Raises:
        StateDictError: ``override`` names a key ``base`` lacks, or a shape or dtype differs.

    Example:
        >>> site_state = merge_state(global_state, split_state(local_state, keys)[0])
    """
    if unknown := set(override).difference(base):
        raise StateDictError(f"merge_state: override keys not in the base: {_show(unknown)}")
    for key, value in override.items():
        _check_entry(key, base[key], value, what="merge_state")
    return {k: override.get(k, v) for k, v in base.items()}


def require_same_layout(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], *, what: str = "state dicts"
) -> None:
    """Refuse two state dicts whose keys, shapes or dtypes differ.

    Args:
        a: first state dict.
        b: second state dict.
        what: what is being compared, for the message. Default ``"state dicts"``.

    Raises:
        StateDictError: naming the missing, unexpected or mismatched keys.

    Example:
        >>> require_same_layout(personal, local, what="IOP-FL personal and local models")
    """
    if missing := set(a).difference(b):
        raise StateDictError(f"{what}: keys only in the first: {_show(missing)}")
    if extra := set(b).difference(a):
        raise StateDictError(f"{what}: keys only in the second: {_show(extra)}")
    for key, value in a.items():
        _check_entry(key, value, b[key], what=what)


def to_numpy(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Numpy views of a CPU state dict (zero-copy; tensors on an accelerator are copied to CPU).

    The arrays share memory with the tensors: writing one changes the other. Dtypes are kept
    (``num_batches_tracked`` stays int64).

    Args:
        state: a state dict. Example: ``model.state_dict()``.

    Returns:
        ``{key: np.ndarray}`` in ``state``'s order, ready for ``data_specs.weights.bundle.encode_bundle``.

    Raises:
        StateDictError: a dtype numpy cannot hold (bfloat16).
    """
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if value.dtype == torch.bfloat16:
            raise StateDictError(f"to_numpy: {key} is bfloat16, which numpy cannot hold")
        out[key] = value.detach().cpu().numpy()
    return out


def from_numpy(
    arrays: Mapping[str, np.ndarray], like: Mapping[str, torch.Tensor] | None = None
) -> StateDict:
    """Torch CPU tensors sharing memory with numpy arrays, checked against a reference layout.

    Read-only, byte-swapped or negatively strided arrays (which torch cannot wrap) are copied.
    ``model.load_state_dict`` copies the result onto the model's device.

    Args:
        arrays: named arrays, e.g. a decoded bundle.
        like: a state dict whose keys, shapes and dtypes the result must match, returned in its
            order. Default None (no check). Example: ``model.state_dict()``.

    Returns:
        ``{key: torch.Tensor}``.

    Raises:
        StateDictError: ``like`` is given and a key, shape or dtype differs.
    """
    out: StateDict = {}
    for key, array in arrays.items():
        a = np.asarray(array)
        if not a.flags.writeable or not a.dtype.isnative:
            a = np.array(a, dtype=a.dtype.newbyteorder("="), copy=True)
        try:
            out[key] = torch.from_numpy(a)
        except ValueError:  # negative strides
            out[key] = torch.from_numpy(a.copy())
    if like is None:
        return out
    require_same_layout(like, out, what="from_numpy (reference, arrays)")
    return {k: out[k] for k in like}


def state_diff(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> StateDict:
    """Entry-wise ``a - b``, so that ``state_add(b, state_diff(a, b))`` gives ``a`` back.

    Float tensors are subtracted in their dtype; integer buffers (``num_batches_tracked``) too,
    which is exact.

    Args:
        a: new state, e.g. the locally trained model.
        b: reference state of the same layout, e.g. the global model.

    Returns:
        New tensors ``a[k] - b[k]``.

    Raises:
        StateDictError: keys, shapes or dtypes differ, or a tensor is boolean.

    Example:
        >>> update = state_diff(local_state, global_state)
    """
    require_same_layout(a, b, what="state_diff")
    with torch.no_grad():
        return {k: _arith(k, v).sub(b[k].to(v.device)) for k, v in a.items()}


def state_add(a: Mapping[str, torch.Tensor], d: Mapping[str, torch.Tensor]) -> StateDict:
    """Entry-wise ``a + d``: applies a difference made by ``state_diff``.

    Args:
        a: the reference state, e.g. the global model.
        d: a difference of the same layout.

    Returns:
        New tensors ``a[k] + d[k]``.

    Raises:
        StateDictError: keys, shapes or dtypes differ, or a tensor is boolean.

    Example:
        >>> local_state = state_add(global_state, update)
    """
    require_same_layout(a, d, what="state_add")
    with torch.no_grad():
        return {k: _arith(k, v).add(d[k].to(v.device)) for k, v in a.items()}


def is_mixable(t: torch.Tensor) -> bool:
    """Whether a tensor takes part in weighted averages (float or complex, not integer counters)."""
    return t.is_floating_point() or t.is_complex()


def _arith(key: str, t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.bool:
        raise StateDictError(f"{key}: boolean tensors have no difference")
    return t.detach()


def _check_entry(key: str, a: torch.Tensor, b: torch.Tensor, *, what: str) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise StateDictError(
            f"{what}: {key} has shape {tuple(a.shape)} in the first, {tuple(b.shape)} in the second"
        )
    if a.dtype != b.dtype:
        raise StateDictError(
            f"{what}: {key} has dtype {a.dtype} in the first, {b.dtype} in the second"
        )


def _show(keys: Iterable[str], limit: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
