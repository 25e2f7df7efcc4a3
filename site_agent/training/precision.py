"""Which arithmetic and memory format a site's forward passes use (bf16 autocast, channels-last)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

from data_specs.constants import Precision


@functools.cache
def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX512-BF16 or AMX), as oneDNN reports."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def use_bf16(precision: Precision | str, device: torch.device | str) -> bool:
    """Whether to autocast to bf16 on ``device``.

    Args:
        precision: ``auto`` (bf16 where the hardware supports it natively), ``fp32`` or ``bf16``.
        device: the torch device. Example: ``"cpu"``.
    """
    precision = Precision(precision)
    if precision == Precision.FP32:
        return False
    if precision == Precision.BF16:
        return True
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return dev.type == "cpu" and cpu_supports_bf16()


@contextlib.contextmanager
def autocast(enabled: bool, device: torch.device | str) -> Iterator[None]:
    """``torch.autocast`` to bf16 on the device's type when ``enabled``; a no-op otherwise."""
    if not enabled:
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        yield


def memory_format(spatial_dims: int, channels_last: bool) -> torch.memory_format:
    """``channels_last`` for 2D networks when asked, else contiguous.

    3D networks stay contiguous: oneDNN's channels-last-3d kernels were not measured faster here.
    """
    if channels_last and spatial_dims == 2:
        return torch.channels_last
    return torch.contiguous_format
