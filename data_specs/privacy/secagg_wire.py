"""Secure aggregation on the wire: the task's protocol parameters, the JSON steps, the flat layout.

Keys, shares and ciphertexts travel as lowercase hex. The masked vector travels as raw
little-endian ring elements (``application/x-fedseg-ring``): the float tensors outside the
task's local keys, in sorted key order, flattened, plus one element for the sample count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated

if TYPE_CHECKING:
    import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from data_specs.errors import PrivacyError
from data_specs.privacy.ring import RingScale
from data_specs.privacy.secagg_common import KeyAdvert, SecAggParams, UnmaskRequest
from data_specs.weights.safetensors_header import TensorLayout

_Strict = ConfigDict(extra="forbid")
Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{2,1024}$")]
RING_MEDIA_TYPE = "application/x-fedseg-ring"


class SecAggTask(BaseModel):
    """What a site needs to run one round of secure aggregation (part of ``TaskAssignment``).

    Args:
        index: this site's index in the round (1..sites), its Shamir x-coordinate.
        sites: sites sampled in the round.
        threshold: shares needed to unmask.
        neighbours: SecAgg+ neighbourhood (None: all).
        ring_bits: 32 or 64.
        value_bound: per-coordinate clip before quantisation.
        max_total_samples: the ring's sample-count headroom.
        context: binds keys and seeds to experiment, round and attempt.
        weighted: pre-multiply by the sample count (FedAvg); False under DP (uniform weights).
        noise_std: distributed DP: per-coordinate Gaussian noise each site adds. Default 0.
    """

    model_config = _Strict

    index: Annotated[int, Field(ge=1)]
    sites: Annotated[int, Field(ge=1)]
    threshold: Annotated[int, Field(ge=1)]
    neighbours: Annotated[int, Field(ge=1)] | None = None
    ring_bits: int = 32
    value_bound: Annotated[float, Field(gt=0.0)] = 1.0
    max_total_samples: Annotated[int, Field(ge=1)] = 1_000_000
    context: Annotated[str, Field(max_length=300)]
    weighted: bool = True
    noise_std: Annotated[float, Field(ge=0.0)] = 0.0

    def params(self) -> SecAggParams:
        scale = RingScale(self.ring_bits, self.value_bound, self.max_total_samples, self.sites)
        return SecAggParams(self.threshold, scale, self.neighbours, self.context.encode())


class KeysIn(BaseModel):
    """Step 1 upload: this site's two public keys."""

    model_config = _Strict

    c_public: Hex
    s_public: Hex


class AdvertOut(BaseModel):
    model_config = _Strict

    index: int
    c_public: Hex
    s_public: Hex

    def advert(self) -> KeyAdvert:
        return KeyAdvert(self.index, bytes.fromhex(self.c_public), bytes.fromhex(self.s_public))


class AdvertsOut(BaseModel):
    """Step 1 answer: every advert of the round (when the step closed)."""

    model_config = _Strict

    adverts: list[AdvertOut]


class SharesIn(BaseModel):
    """Step 2: encrypted shares by recipient index (decimal string)."""

    model_config = _Strict

    shares: dict[str, Hex]


class UnmaskOut(BaseModel):
    """Step 4 request to one site."""

    model_config = _Strict

    survivors: list[int]
    dropped: list[int]

    def request(self) -> UnmaskRequest:
        return UnmaskRequest(frozenset(self.survivors), frozenset(self.dropped))


class UnmaskIn(BaseModel):
    """Step 4 answer: Shamir shares by the index of the site they belong to."""

    model_config = _Strict

    seed_shares: dict[str, Hex]
    key_shares: dict[str, Hex]


def by_index(table: Mapping[int, bytes]) -> dict[str, str]:
    return {str(k): v.hex() for k, v in table.items()}


def from_index(table: Mapping[str, str]) -> dict[int, bytes]:
    try:
        return {int(k): bytes.fromhex(v) for k, v in table.items()}
    except ValueError as exc:
        raise PrivacyError(f"a share table has a key that is not a site index: {exc}") from exc


def flat_keys(expected: TensorLayout, local_keys: frozenset[str]) -> list[str]:
    """The keys that travel, in order: float tensors outside ``local_keys``, sorted."""
    return sorted(
        k for k, (_, dtype) in expected.items() if "float" in dtype and k not in local_keys
    )


def flat_size(expected: TensorLayout, local_keys: frozenset[str]) -> int:
    return sum(math.prod(expected[k][0]) for k in flat_keys(expected, local_keys))


def flatten(tensors: Mapping[str, np.ndarray], keys: list[str]) -> np.ndarray:
    import numpy as np

    return np.concatenate([np.asarray(tensors[k], dtype=np.float64).reshape(-1) for k in keys])


def unflatten(flat: np.ndarray, expected: TensorLayout, keys: list[str]) -> dict[str, np.ndarray]:
    out, offset = {}, 0
    for k in keys:
        shape, dtype = expected[k]
        n = math.prod(shape)
        out[k] = flat[offset : offset + n].reshape(shape).astype(dtype)
        offset += n
    if offset != flat.size:
        raise PrivacyError(f"a flat update of {flat.size} values for {offset} expected")
    return out
