"""Sketched update ``subsample``: a random subset of entries, rescaled so the update is unbiased.

Per tensor of ``n`` entries, ``k = round(p·n)`` (at least 1) distinct positions are drawn
uniformly from the seed; the site sends only the ``k`` values there, each multiplied by
``n / k``, and the server, drawing the same positions, scatters them into zeros. Every entry is
kept with probability ``k / n``, so ``E[decode(encode(x))] = x`` (Konečný et al. 2016, §3.1).
The positions are never sent: the seed (in ``codec_params``) stands for them.

Parameters: ``p`` (0.25; keep fraction in ``(0, 1]``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from data_specs.parameters.codecs import SubsampleParams
from data_specs.update_codecs.codec import (
    Codec,
    Layout,
    Shape,
    TensorJob,
    kept_count,
    sample_indices,
)

NAME = "subsample"


def _layout(shape: Shape, params: Mapping[str, Any]) -> Layout:
    return {"sub": ((kept_count(math.prod(shape), params["p"]),), "float32")}


def _positions(job: TensorJob) -> np.ndarray:
    n = job.size
    return job.shared(sample_indices(job.rng("mask"), n, kept_count(n, job.params["p"])))


def _encode(job: TensorJob, x: np.ndarray) -> dict[str, np.ndarray]:
    idx = _positions(job)
    values = x.reshape(-1)[idx]
    values *= np.float32(job.size / idx.size)
    return {"sub": values}


def _decode(job: TensorJob, parts: Mapping[str, np.ndarray]) -> np.ndarray:
    dense = np.zeros(job.size, dtype=np.float32)
    dense[_positions(job)] = parts["sub"]
    return dense.reshape(job.shape)


SUBSAMPLE = Codec(
    name=NAME,
    version=1,
    params=SubsampleParams,
    layout=_layout,
    encode=_encode,
    decode=_decode,
)
