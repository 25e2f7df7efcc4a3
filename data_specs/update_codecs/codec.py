"""The codec record every update codec fills in, and the seeded randomness site and server share.

A codec works tensor by tensor. ``layout`` says, from the tensor's shape and the codec
parameters alone, which payload parts the tensor travels as (``<key>#<part>``) with their
shapes and dtypes, so the server checks a payload against its own task spec, never against
sizes the site claims. ``encode`` / ``decode`` turn one float32 tensor into those parts and
back. Randomness both sides must agree on (masks, rotations, bases) comes from
:meth:`TensorJob.rng` and is recorded with :meth:`TensorJob.shared` into the update's checksum
(with the seed, the parameters and the payload parts); the checksum travels in ``codec_params``
so a decode under another seed or another random generator fails loudly instead of returning
noise.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data_specs.errors import CodecError
from data_specs.parameters.rules import ParamRules, ParamValueError

PART_SEPARATOR = "#"
"""Joins a state-dict key and a payload part name: ``conv.weight#q``."""

Shape = tuple[int, ...]
Layout = dict[str, tuple[Shape, str]]


def tensor_rng(seed: int, codec: str, key: str, purpose: str) -> np.random.Generator:
    """The generator for one codec, tensor and purpose (independent streams, stable across runs).

    Args:
        seed: the update's seed (the aggregator derives one per site and round). Example: ``7``.
        codec: codec name. Example: ``"randmask"``.
        key: state-dict key. Example: ``"enc.conv.weight"``.
        purpose: what the numbers are for. Example: ``"mask"``.
    """
    digest = hashlib.sha256(f"{codec}\0{key}\0{purpose}".encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:16], "little")])


def sample_indices(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``k`` distinct indices of ``range(n)``, uniformly at random, sorted (int64)."""
    return np.sort(rng.choice(n, size=k, replace=False, shuffle=False))


def kept_count(n: int, fraction: float) -> int:
    """Entries kept out of ``n`` for a keep fraction: ``round(fraction · n)``, at least 1."""
    return max(1, min(n, round(fraction * n)))


@dataclass
class TensorJob:
    """What a codec knows while it encodes or decodes one tensor.

    Args:
        codec: codec name. Example: ``"quantize"``.
        key: state-dict key. Example: ``"enc.conv.weight"``.
        shape: the dense tensor's shape. Example: ``(16, 1, 3, 3, 3)``.
        params: validated codec parameters, defaults filled in. Example: ``{"bits": 4}``.
        seed: the update's seed. Example: ``7``.
        checksum: running sha256 of the whole update (seed, parameters, shared randomness,
            payload parts).
        state: site-side memory (top-k error feedback), or ``None``.
    """

    codec: str
    key: str
    shape: Shape
    params: Mapping[str, Any]
    seed: int
    checksum: Any = field(default_factory=hashlib.sha256)
    state: dict[str, np.ndarray] | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def rng(self, purpose: str) -> np.random.Generator:
        return tensor_rng(self.seed, self.codec, self.key, purpose)

    def shared(self, draws: np.ndarray) -> np.ndarray:
        """Record randomness the server regenerates (it enters the checksum)."""
        self.checksum.update(self.key.encode())
        self.checksum.update(np.ascontiguousarray(draws).tobytes())
        return draws


@dataclass(frozen=True)
class Codec:
    """An update codec: its parameter model, the payload layout, encode and decode.

    Args:
        name: registry name. Example: ``"topk"``.
        version: bumped whenever the payload or the random streams change. Example: ``1``.
        params: the pydantic model of its parameters, defaults and ranges
            (``data_specs.parameters.codecs``). Example: ``TopkParams``.
        layout: ``(shape, params) -> {part: (shape, dtype)}``, or ``None`` for "send raw".
        encode: ``(job, float32 tensor) -> {part: array}``, site side.
        decode: ``(job, {part: array}) -> float32 tensor of job.shape``, server side.
    """

    name: str
    version: int
    params: type[ParamRules]
    layout: Callable[[Shape, Mapping[str, Any]], Layout | None]
    encode: Callable[[TensorJob, np.ndarray], dict[str, np.ndarray]]
    decode: Callable[[TensorJob, Mapping[str, np.ndarray]], np.ndarray]

    @property
    def defaults(self) -> dict[str, Any]:
        """Every parameter with its default. Example: ``{"fraction": 0.01}``."""
        return self.params().model_dump()

    def resolve(self, params: Any) -> dict[str, Any]:
        """Fill in defaults and check; unknown names or bad values raise ``CodecError``."""
        try:
            return self.params.resolve(params)
        except ParamValueError as exc:
            raise CodecError(str(exc)) from None
