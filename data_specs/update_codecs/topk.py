"""Sketched update ``topk``: the largest-magnitude entries of each tensor, with error feedback.

Per tensor of ``n`` entries the site adds the residual it kept from earlier rounds, sends the
``k = round(fraction·n)`` (at least 1) entries of largest magnitude as int32 positions and
float32 values, and keeps everything else as the new residual (Stich et al. 2018; Lin et al.
2018, "Deep gradient compression"). Nothing is lost, only delayed: over rounds,
``Σ decoded + residual == Σ updates``. The residual lives in the ``state`` dict the caller
passes to ``encode_update`` (one float32 array per key, updated in place); without a state
there is no error feedback and the rest of the update is dropped.

Parameters: ``fraction`` (0.01; in ``(0, 1]``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from data_specs.errors import CodecError
from data_specs.parameters.codecs import TopkParams
from data_specs.update_codecs.codec import (
    Codec,
    Layout,
    Shape,
    TensorJob,
    kept_count,
)

NAME = "topk"
_MAX_ENTRIES = 2**31 - 1  # positions travel as int32


def _layout(shape: Shape, params: Mapping[str, Any]) -> Layout | None:
    n = math.prod(shape)
    if n > _MAX_ENTRIES:
        return None  # int32 positions cannot address it: the tensor travels raw
    k = kept_count(n, params["fraction"])
    return {"topk_idx": ((k,), "int32"), "topk_val": ((k,), "float32")}


def _with_residual(job: TensorJob, x: np.ndarray) -> np.ndarray:
    """The update plus the residual kept for this key (a new flat float32 array)."""
    acc = np.array(x, dtype=np.float32, copy=True).reshape(-1)
    if job.state is None or job.key not in job.state:
        return acc
    residual = np.asarray(job.state[job.key])
    if residual.shape != job.shape:
        raise CodecError(
            f"top-k error-feedback state for {job.key!r} has shape {residual.shape}, "
            f"expected {job.shape}: the state belongs to another model; start from an empty one"
        )
    acc += residual.reshape(-1)
    return acc


def _encode(job: TensorJob, x: np.ndarray) -> dict[str, np.ndarray]:
    acc = _with_residual(job, x)
    n = acc.size
    k = kept_count(n, job.params["fraction"])
    # argpartition is deterministic for a given input; sorting the positions makes the
    # payload canonical and lets the server check them cheaply.
    idx = np.sort(np.argpartition(np.abs(acc), n - k)[n - k :])
    values = acc[idx]
    if job.state is not None:
        acc[idx] = 0.0
        job.state[job.key] = acc.reshape(job.shape)
    return {"topk_idx": idx.astype(np.int32), "topk_val": values}


def _decode(job: TensorJob, parts: Mapping[str, np.ndarray]) -> np.ndarray:
    idx = parts["topk_idx"]
    if idx.size and (idx[0] < 0 or idx[-1] >= job.size or np.any(np.diff(idx) <= 0)):
        raise CodecError(
            f"topk payload of {job.key!r}: positions must be strictly increasing "
            f"within [0, {job.size}), got values from {int(idx.min())} to {int(idx.max())}"
        )
    dense = np.zeros(job.size, dtype=np.float32)
    dense[idx] = parts["topk_val"]
    return dense.reshape(job.shape)


TOPK = Codec(
    name=NAME,
    version=1,
    params=TopkParams,
    layout=_layout,
    encode=_encode,
    decode=_decode,
)
