"""Structured update ``lowrank``: each weight update as ``A·B`` with ``B`` random from the seed.

A tensor of shape ``(out, ...)`` is viewed as an ``out × rest`` matrix ``Δ``. ``B`` (``r × rest``,
Gaussian with variance ``1/rest``) is drawn from the seed on both sides and never sent; the site
sends ``A`` (``out × r``), the least-squares fit ``A = Δ Bᵀ (B Bᵀ)⁻¹``, and the server decodes
``A·B``, the projection of ``Δ``'s rows onto the row space of ``B``. Exact when ``Δ`` lies in that
span. Compression is ``rest / r``.

This is the *projection variant*: Konečný et al. 2016 (§2, low rank) train ``A`` directly with
``B`` fixed, so the update is low-rank by construction. Here the site trains its full model and
projects the update afterwards; a site agent that wants the trained variant can fetch ``B``
with :func:`lowrank_basis`.

Tensors with fewer than two dimensions, or with ``rest <= r`` (no gain), travel raw.
Parameters: ``rank`` (4; an integer ``r >= 1``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from data_specs.parameters.codecs import LowrankParams
from data_specs.update_codecs.codec import (
    Codec,
    Layout,
    Shape,
    TensorJob,
    tensor_rng,
)

NAME = "lowrank"


def _matrix_shape(shape: Shape) -> tuple[int, int]:
    return shape[0], math.prod(shape[1:])


def _layout(shape: Shape, params: Mapping[str, Any]) -> Layout | None:
    if len(shape) < 2:
        return None
    out, rest = _matrix_shape(shape)
    if rest <= params["rank"]:
        return None
    return {"lr_a": ((out, int(params["rank"])), "float32")}


def lowrank_basis(shape: Shape, seed: int, rank: int, *, key: str) -> np.ndarray:
    """The fixed factor ``B`` (``rank × rest``, float32) of one tensor under ``lowrank``.

    Args:
        shape: the tensor's shape (at least 2-D). Example: ``(16, 8, 3, 3, 3)``.
        seed: the update's seed. Example: ``7``.
        rank: the codec's ``rank``. Example: ``4``.
        key: the state-dict key. Example: ``"enc.conv.weight"``.
    """
    _, rest = _matrix_shape(shape)
    rng = tensor_rng(seed, NAME, key, "basis")
    return (rng.standard_normal((rank, rest)) / math.sqrt(rest)).astype(np.float32)


def _basis(job: TensorJob) -> np.ndarray:
    return job.shared(lowrank_basis(job.shape, job.seed, int(job.params["rank"]), key=job.key))


def _encode(job: TensorJob, x: np.ndarray) -> dict[str, np.ndarray]:
    b = _basis(job).astype(np.float64)
    delta = x.reshape(_matrix_shape(job.shape)).astype(np.float64)
    # A = Δ Bᵀ (B Bᵀ)⁻¹, via the r × r normal equations (B B^T is symmetric positive definite).
    a = np.linalg.solve(b @ b.T, b @ delta.T).T
    return {"lr_a": a.astype(np.float32)}


def _decode(job: TensorJob, parts: Mapping[str, np.ndarray]) -> np.ndarray:
    b = _basis(job).astype(np.float64)
    dense = parts["lr_a"].astype(np.float64) @ b
    return dense.astype(np.float32).reshape(job.shape)


LOWRANK = Codec(
    name=NAME,
    version=1,
    params=LowrankParams,
    layout=_layout,
    encode=_encode,
    decode=_decode,
)
