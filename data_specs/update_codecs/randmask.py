"""Structured update ``randmask``: the update restricted to a seeded random subset of entries.

Konečný et al. 2016 (§2, random mask): each round the site may only change a random sparse
pattern of each tensor, drawn from a seed the server knows, so only the values on the pattern
travel. Unlike ``subsample`` nothing is rescaled: the decoded update *is* the update restricted
to the pattern (zero elsewhere). A site agent that trains inside the pattern gets the exact
update through; one that trains everything sends the projection of its update onto the pattern.
The agent learns the pattern with :func:`randmask_mask`.

Parameters: ``p`` (0.25; fraction of entries in the pattern, in ``(0, 1]``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from data_specs.parameters.codecs import RandmaskParams
from data_specs.update_codecs.codec import (
    Codec,
    Layout,
    Shape,
    TensorJob,
    kept_count,
    sample_indices,
    tensor_rng,
)

NAME = "randmask"


def _layout(shape: Shape, params: Mapping[str, Any]) -> Layout:
    return {"mask": ((kept_count(math.prod(shape), params["p"]),), "float32")}


def mask_positions(shape: Shape, seed: int, p: float, key: str) -> np.ndarray:
    """Sorted flat positions of the pattern (int64); see :func:`randmask_mask`."""
    n = math.prod(shape)
    return sample_indices(tensor_rng(seed, NAME, key, "mask"), n, kept_count(n, p))


def randmask_mask(shape: Shape, seed: int, p: float, *, key: str) -> np.ndarray:
    """The boolean pattern a site may train for one tensor under the ``randmask`` codec.

    Tensors below the codec's ``min_size`` and non-float tensors travel whole: train them fully.

    Args:
        shape: the tensor's shape. Example: ``(16, 8, 3, 3, 3)``.
        seed: the update's seed (``TrainConfig.seed`` of the task). Example: ``7``.
        p: the codec's ``p``. Example: ``0.25``.
        key: the state-dict key; every tensor gets its own pattern. Example: ``"enc.conv.weight"``.

    Returns:
        ``bool`` array of ``shape`` with ``round(p·n)`` (at least one) ``True`` entries.
    """
    mask = np.zeros(math.prod(shape), dtype=bool)
    mask[mask_positions(shape, seed, p, key)] = True
    return mask.reshape(shape)


def _positions(job: TensorJob) -> np.ndarray:
    return job.shared(mask_positions(job.shape, job.seed, job.params["p"], job.key))


def _encode(job: TensorJob, x: np.ndarray) -> dict[str, np.ndarray]:
    return {"mask": x.reshape(-1)[_positions(job)]}


def _decode(job: TensorJob, parts: Mapping[str, np.ndarray]) -> np.ndarray:
    dense = np.zeros(job.size, dtype=np.float32)
    dense[_positions(job)] = parts["mask"]
    return dense.reshape(job.shape)


RANDMASK = Codec(
    name=NAME,
    version=1,
    params=RandmaskParams,
    layout=_layout,
    encode=_encode,
    decode=_decode,
)
