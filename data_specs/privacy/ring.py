"""Fixed-point quantisation of weighted updates into the ring Z_(2^bits), and back from a sum.

Secure aggregation adds integers modulo ``2^bits`` (masks cancel only in a finite ring), so a
site's float update must become ring elements on a scale every site shares. Site ``i`` sends
``q_i = round_stoch(n_i · clip(x_i, ±bound) · scale) mod 2^bits`` where ``n_i`` is its sample
count (FedAvg weighting by pre-multiplication) and ``scale`` is fixed by the experiment:

    scale = (2^(bits-1) − 1 − max_sites) / (bound · max_total_samples)

so that ``|Σ_i q_i| < 2^(bits−1)`` for any ``Σ n_i ≤ max_total_samples`` (stochastic rounding
moves each value by less than 1). The server reads the modular sum as a signed integer and
divides by ``scale · Σ n_i``; ``Σ n_i`` travels as one more ring element, masked like the rest,
so the server learns only the total. The error per coordinate of the weighted mean is below
``max_sites / (scale · Σ n_i)`` (unbiased: stochastic rounding), plus whatever clipping to
``± bound`` removed (counted and reported by :func:`encode_weighted`).

The block-wise ``quantize`` codec cannot be used here: its per-block ``lo``/``hi`` differ per
site, so codes of two sites do not add up. Its idea (unbiased dithered rounding) is reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

from data_specs.errors import PrivacyError

RING_BITS = (32, 64)


def _dtype(bits: int) -> type[np.unsignedinteger]:
    import numpy as np

    if bits not in RING_BITS:
        raise PrivacyError(f"ring bits must be one of {RING_BITS}, got {bits}")
    return np.uint32 if bits == 32 else np.uint64


@dataclass(frozen=True)
class RingScale:
    """The shared fixed-point scale of one experiment.

    Args:
        bits: ring size ``2^bits``: 32 (same bytes as float32) or 64. Example: ``32``.
        bound: per-coordinate clip of the (unweighted) update. Example: ``0.5``.
        max_total_samples: largest ``Σ n_i`` of a round the sum must hold. Example: ``100000``.
        max_sites: largest number of sites summed (each adds < 1 of rounding). Example: ``100``.
    """

    bits: int = 32
    bound: float = 1.0
    max_total_samples: int = 1_000_000
    max_sites: int = 1000

    def __post_init__(self) -> None:
        import numpy as np

        _dtype(self.bits)
        if not (self.bound > 0 and np.isfinite(self.bound)):
            raise PrivacyError(f"ring bound must be a positive number, got {self.bound!r}")
        if self.max_total_samples < 1 or self.max_sites < 1:
            raise PrivacyError(
                "max_total_samples and max_sites must be >= 1, got "
                f"{self.max_total_samples} and {self.max_sites}"
            )
        if self.scale <= 0:
            raise PrivacyError(f"a {self.bits}-bit ring cannot hold {self.max_sites} sites")

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        return _dtype(self.bits)

    @property
    def scale(self) -> float:
        """Ring units per unit of ``n_i · x``."""
        headroom = float(2 ** (self.bits - 1) - 1 - self.max_sites)
        return headroom / (self.bound * self.max_total_samples)

    def step(self, total_samples: int) -> float:
        """The resolution of the decoded weighted mean for a round with ``Σ n_i`` samples."""
        return 1.0 / (self.scale * total_samples)


def to_ring(values: np.ndarray, bits: int) -> np.ndarray:
    """Signed integers (int64) to their residues modulo ``2^bits`` (two's complement)."""
    import numpy as np

    return values.astype(np.int64).view(np.uint64).astype(_dtype(bits))


def from_ring(values: np.ndarray, bits: int) -> np.ndarray:
    """Residues modulo ``2^bits`` to signed integers in ``[−2^(bits−1), 2^(bits−1))`` (int64)."""
    import numpy as np

    dtype = _dtype(bits)
    arr = np.asarray(values, dtype=dtype)
    signed = arr.view(np.int32 if bits == 32 else np.int64)
    return signed.astype(np.int64)


@dataclass(frozen=True)
class EncodedUpdate:
    """A site's ring vector: the weighted, quantised update and its sample count appended.

    Args:
        vector: ``size + 1`` ring elements; the last is ``n_i``.
        clipped: coordinates that were outside ``± bound`` and were clipped.
    """

    vector: np.ndarray
    clipped: int


def encode_weighted(
    update: np.ndarray, num_samples: int, scale: RingScale, rng: np.random.Generator
) -> EncodedUpdate:
    """Pre-multiply a flat float update by its sample count and quantise it into the ring.

    Args:
        update: flat float update ``W − θ``. Example: ``np.zeros(10, np.float32)``.
        num_samples: the site's sample count ``n_i`` (> 0). Example: ``120``.
        scale: the experiment's ring scale.
        rng: randomness of the stochastic rounding (site-local, not shared).

    Raises:
        PrivacyError: a non-finite value, or a count outside ``[1, max_total_samples]``.
    """
    import numpy as np

    if not 1 <= num_samples <= scale.max_total_samples:
        raise PrivacyError(
            f"num_samples must be in [1, {scale.max_total_samples}] for this ring, got {num_samples}"
        )
    flat = np.asarray(update, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(flat)):
        raise PrivacyError("the update holds NaN or Inf; nothing is encoded")
    clipped = int(np.count_nonzero(np.abs(flat) > scale.bound))
    t = np.clip(flat, -scale.bound, scale.bound) * (num_samples * scale.scale)
    t = np.floor(t + rng.random(t.shape))  # unbiased stochastic rounding
    ints = np.append(t.astype(np.int64), np.int64(num_samples))
    return EncodedUpdate(to_ring(ints, scale.bits), clipped)


def ring_sum(vectors: list[np.ndarray], bits: int) -> np.ndarray:
    """The sum modulo ``2^bits`` of equally long ring vectors (wrap-around is the point)."""
    import numpy as np

    if not vectors:
        raise PrivacyError("no vectors to sum")
    total = np.zeros_like(np.asarray(vectors[0], dtype=_dtype(bits)))
    for v in vectors:
        if v.shape != total.shape:
            raise PrivacyError(f"ring vectors differ in length: {v.shape} vs {total.shape}")
        np.add(total, v.astype(total.dtype, copy=False), out=total)
    return total


def decode_mean(total: np.ndarray, scale: RingScale) -> tuple[np.ndarray, int]:
    """The weighted mean ``Σ n_i x_i / Σ n_i`` (float64) and ``Σ n_i`` from a ring sum.

    Raises:
        PrivacyError: the sample total is not positive (the sum is not a valid one).
    """
    import numpy as np

    signed = from_ring(total, scale.bits)
    count = int(signed[-1])
    if count <= 0:
        raise PrivacyError(f"the summed sample count is {count}; expected a positive total")
    return signed[:-1].astype(np.float64) / (scale.scale * count), count
