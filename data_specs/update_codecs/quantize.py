"""Sketched update ``quantize``: unbiased stochastic quantisation to 8, 4, 2 or 1 bits per value.

The flattened tensor is cut into blocks of ``b`` values (padded at the end by repeating the
last value); optionally each block is randomly rotated (``hadamard``). Per block, with
``lo``/``hi`` its min and max and ``L = 2^bits − 1`` levels, a value ``x`` becomes
``q = ⌊(x − lo)/s + u⌋`` with ``s = (hi − lo)/L`` and ``u ~ U[0, 1)`` from the seed, so
``E[q] = (x − lo)/s`` and the decoded ``lo + q·s`` is unbiased (Konečný et al. 2016, §3.2).
The error per value is below one step ``s``. Codes are bit-packed, so a block costs
``b·bits/8`` bytes plus 8 bytes for ``lo`` and ``hi``: for ``b = 1024`` at 4 bits, 7.9× less
than float32.

Parameters: ``bits`` (8; 1, 2, 4 or 8), ``rotate`` (False), ``block`` (1024; a power of two
from 8 to 2^20, shrunk to the tensor's size rounded up to a power of two).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from data_specs.errors import CodecError
from data_specs.parameters.codecs import QuantizeParams
from data_specs.update_codecs.codec import Codec, Layout, Shape, TensorJob
from data_specs.update_codecs.hadamard import (
    next_power_of_two,
    random_signs,
    rotate,
    unrotate,
)

NAME = "quantize"


def _geometry(size: int, params: Mapping[str, Any]) -> tuple[int, int]:
    """``(block, blocks)``: the block length actually used and how many blocks."""
    block = max(8, min(int(params["block"]), next_power_of_two(size)))
    return block, -(-size // block)


def _layout(shape: Shape, params: Mapping[str, Any]) -> Layout:
    block, blocks = _geometry(math.prod(shape), params)
    return {
        "q": ((blocks * block * params["bits"] // 8,), "uint8"),
        "q_lo": ((blocks,), "float32"),
        "q_hi": ((blocks,), "float32"),
    }


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack codes ``< 2^bits`` (uint8, length a multiple of ``8 / bits``) into bytes, MSB first.

    Example: ``pack_bits(np.array([1, 2], np.uint8), 4) -> [0x12]``.
    """
    if bits == 8:
        return codes.astype(np.uint8, copy=False)
    per_byte = 8 // bits
    lanes = codes.reshape(-1, per_byte)
    packed = np.zeros(lanes.shape[0], dtype=np.uint8)
    for j in range(per_byte):
        packed |= lanes[:, j] << np.uint8(8 - bits * (j + 1))
    return packed


def unpack_bits(packed: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: uint8 codes, ``8 / bits`` per byte."""
    if bits == 8:
        return packed
    per_byte = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    lanes = np.empty((packed.size, per_byte), dtype=np.uint8)
    for j in range(per_byte):
        np.bitwise_and(packed >> np.uint8(8 - bits * (j + 1)), mask, out=lanes[:, j])
    return lanes.reshape(-1)


def _signs(job: TensorJob, shape: tuple[int, int]) -> np.ndarray:
    return job.shared(random_signs(job.rng("rotation"), shape))


def _encode(job: TensorJob, x: np.ndarray) -> dict[str, np.ndarray]:
    bits = int(job.params["bits"])
    block, blocks = _geometry(x.size, job.params)
    flat = x.reshape(-1)
    padded = np.pad(flat, (0, blocks * block - flat.size), mode="edge")
    rows = padded.reshape(blocks, block)
    if job.params["rotate"]:
        rows = rotate(rows, _signs(job, rows.shape))
    lo = rows.min(axis=1)
    hi = rows.max(axis=1)
    levels = (1 << bits) - 1
    step = (hi - lo) / np.float32(levels)
    # t in [0, L]; flat blocks (step 0) map to code 0 and decode to lo exactly.
    t = (rows - lo[:, None]) / np.where(step > 0, step, np.float32(1.0))[:, None]
    t += job.rng("dither").random(t.shape, dtype=np.float32)
    np.floor(t, out=t)
    np.clip(t, 0, levels, out=t)
    codes = t.astype(np.uint8).reshape(-1)
    return {"q": pack_bits(codes, bits), "q_lo": lo, "q_hi": hi}


def _decode(job: TensorJob, parts: Mapping[str, np.ndarray]) -> np.ndarray:
    bits = int(job.params["bits"])
    block, blocks = _geometry(job.size, job.params)
    lo, hi = parts["q_lo"], parts["q_hi"]
    if np.any(hi < lo):
        raise CodecError(f"quantize payload of {job.key!r}: block maximum below block minimum")
    step = (hi - lo) / np.float32((1 << bits) - 1)
    rows = unpack_bits(parts["q"], bits).reshape(blocks, block).astype(np.float32)
    rows *= step[:, None]
    rows += lo[:, None]
    if job.params["rotate"]:
        rows = unrotate(rows, _signs(job, rows.shape))
    return rows.reshape(-1)[: job.size].reshape(job.shape)


QUANTIZE = Codec(
    name=NAME,
    version=1,
    params=QuantizeParams,
    layout=_layout,
    encode=_encode,
    decode=_decode,
)
