"""Per-key combination of site differences: weighted mean, coordinate-wise median, trimmed mean.

Each combiner reads one key of every site in turn (sites already sorted by ``site_id``) and
returns the combined pseudo-gradient ``Δ̄`` for that key, so streamed and in-memory aggregation
run exactly the same arithmetic and agree bit for bit.

Precision: float32 tensors are accumulated in float32 with in-place numpy ops (a multiply into
a scratch buffer, then an add), which keeps the weighted mean memory-bound (~13 GB/s of update
bytes on two cores; a float64 accumulator costs the float32->float64 casts and halves that).
For K sites the rounding error is at most about ``K · 2^-24`` relative to ``Σ w_i |Δ_i|``
(≈ 4e-6 for 64 sites), far below the noise of local SGD. float16 is accumulated in float32,
float64 in float64. numpy's elementwise ops are IEEE-exact per operation, so the bits do not
depend on the CPU (unlike a BLAS axpy, whose fused multiply-add differs between kernels).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from aggregator.strategies.contract import StrategyError, UpdateReader


def accumulator_dtype(dtype: np.dtype) -> np.dtype:
    """float32 for float16/float32 tensors, float64 for float64."""
    return np.result_type(dtype, np.float32)


def read_diff(reader: UpdateReader, key: str, theta: np.ndarray) -> np.ndarray:
    """One site's difference for ``key``, checked against the global tensor.

    Raises:
        StrategyError: the key is missing, or shape or kind (float vs integer) differs.
    """
    try:
        diff = np.asarray(reader.get(key))
    except KeyError as exc:
        raise StrategyError(f"update of site {reader.site_id!r} has no tensor {key!r}") from exc
    if diff.shape != theta.shape:
        raise StrategyError(
            f"update of site {reader.site_id!r}: {key!r} has shape {diff.shape}, "
            f"expected {theta.shape} like the global model"
        )
    same_kind = (diff.dtype.kind == "f") == (theta.dtype.kind == "f")
    if not same_kind:
        raise StrategyError(
            f"update of site {reader.site_id!r}: {key!r} has dtype {diff.dtype}, "
            f"expected {'a float' if theta.dtype.kind == 'f' else 'an integer'} dtype "
            f"like the global {theta.dtype}"
        )
    return diff


class Combiner(Protocol):
    """Turns the sites' differences for one key into one pseudo-gradient."""

    uses_weights: bool

    def combine(
        self, key: str, theta: np.ndarray, readers: Sequence[UpdateReader], weights: np.ndarray
    ) -> np.ndarray:
        """``Δ̄`` for ``key`` in :func:`accumulator_dtype` of ``theta``; a fresh array."""
        ...


class WeightedMean:
    """FedAvg's ``Σ n_i Δ_i / Σ n_i`` with normalised weights ``w_i = n_i / Σ n``."""

    uses_weights = True

    def combine(
        self, key: str, theta: np.ndarray, readers: Sequence[UpdateReader], weights: np.ndarray
    ) -> np.ndarray:
        dtype = accumulator_dtype(theta.dtype)
        acc = np.empty(theta.shape, dtype=dtype)
        scratch = np.empty_like(acc)
        w = weights.astype(dtype)
        # First site written straight into the accumulator: no zero fill, one pass saved.
        np.multiply(read_diff(readers[0], key, theta), w[0], out=acc, casting="same_kind")
        for reader, wi in zip(readers[1:], w[1:], strict=True):
            np.multiply(read_diff(reader, key, theta), wi, out=scratch, casting="same_kind")
            np.add(acc, scratch, out=acc)
        return acc


_SORT_CHUNK = 16384  # coordinates per sorted block: K x 16384 floats stay in L2 cache


def _sorted_blocks(
    key: str, theta: np.ndarray, readers: Sequence[UpdateReader]
) -> Iterator[tuple[slice, np.ndarray]]:
    """Blocks ``(coordinates, K)`` of the sites' values, each row sorted ascending.

    Holds one reference per site for this key (memory-mapped readers cost no copy) and one
    block. Rows of K contiguous values sort ~10x faster than ``np.median(axis=0)``'s strided
    partition.
    """
    flats = [read_diff(r, key, theta).reshape(-1) for r in readers]
    size = theta.size
    block = np.empty((min(size, _SORT_CHUNK), len(flats)), dtype=accumulator_dtype(theta.dtype))
    for start in range(0, size, _SORT_CHUNK):
        stop = min(size, start + _SORT_CHUNK)
        rows = block[: stop - start]
        for column, flat in enumerate(flats):
            rows[:, column] = flat[start:stop]
        rows.sort(axis=1)
        yield slice(start, stop), rows


class CoordinateMedian:
    """Coordinate-wise median of the differences (Yin et al. 2018); sample counts are ignored.

    Equal, bit for bit, to ``np.median(np.stack(diffs), axis=0)`` (mean of the two middle
    values for an even number of sites).
    """

    uses_weights = False

    def combine(
        self, key: str, theta: np.ndarray, readers: Sequence[UpdateReader], weights: np.ndarray
    ) -> np.ndarray:
        k = len(readers)
        out = np.empty(theta.size, dtype=accumulator_dtype(theta.dtype))
        for where, rows in _sorted_blocks(key, theta, readers):
            if k % 2:
                out[where] = rows[:, k // 2]
            else:
                np.add(rows[:, k // 2 - 1], rows[:, k // 2], out=out[where])
                out[where] *= out.dtype.type(0.5)
        return out.reshape(theta.shape)


class TrimmedMean:
    """Coordinate-wise mean after dropping the ``⌊β·K⌋`` smallest and largest values.

    Same cut as ``scipy.stats.trim_mean(x, β, axis=0)``; sample counts are ignored. The mean of
    the kept values is taken in float64 and cast back.

    Args:
        trim_fraction: ``β`` in ``[0, 0.5)``, cut from each side. Example: ``0.1``.
    """

    uses_weights = False

    def __init__(self, trim_fraction: float) -> None:
        self.trim_fraction = trim_fraction

    def combine(
        self, key: str, theta: np.ndarray, readers: Sequence[UpdateReader], weights: np.ndarray
    ) -> np.ndarray:
        k = len(readers)
        cut = int(self.trim_fraction * k)  # β < 0.5 guarantees 2·cut < k
        out = np.empty(theta.size, dtype=accumulator_dtype(theta.dtype))
        for where, rows in _sorted_blocks(key, theta, readers):
            out[where] = rows[:, cut : k - cut].mean(axis=1, dtype=np.float64)
        return out.reshape(theta.shape)


def integer_max(key: str, theta: np.ndarray, readers: Sequence[UpdateReader]) -> np.ndarray:
    """``θ + max_i Δ_i`` for integer tensors (BatchNorm ``num_batches_tracked``).

    Averaging a counter would turn it into a float; the largest count any site reached stays an
    integer, is monotone over rounds and does not depend on the order of sites.
    """
    top = np.array(read_diff(readers[0], key, theta), dtype=theta.dtype, copy=True)
    for reader in readers[1:]:
        np.maximum(top, read_diff(reader, key, theta), out=top, casting="same_kind")
    # In place: np.add on 0-d inputs would return a numpy scalar, not an array.
    top += theta
    return top
