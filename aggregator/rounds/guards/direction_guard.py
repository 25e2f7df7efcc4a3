"""Direction check: leave out updates that point against the round's coordinate-wise median.

A sign-flipped update of honest norm passes the norm bound and, under FedAvg, cancels its share
of the step (one site of five costs a fifth of it). The coordinate-wise median of the round's
differences ``W - θ`` is a reference that a minority cannot move far; an update whose cosine
similarity with it is below ``min_update_cosine`` (default 0: it points away from the median)
is left out of the average.

Rules that keep honest sites in:

- the check needs at least ``MIN_UPDATES`` (3) updates: with two, the median is their mean and
  each update's cosine with it says nothing about which one is honest;
- at most a minority (``(K - 1) // 2`` of K updates) is left out, lowest cosine first, so a
  round whose honest updates are noise-dominated (late in training) keeps its majority;
- an update or median of norm 0 has no direction and is kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from aggregator.rounds.guards.safeguards import DiffReader

MIN_UPDATES = 3
_CHUNK = 16384  # coordinates per block: K x 16384 float64 values
_BLOCK_VALUES = 1 << 18  # values per block of the matrix pass (1 MiB of float32)
_NETWORK_MAX = 16  # up to this many updates the median comes from a sorting network


def median_cosines(readers: Sequence[DiffReader], keys: Sequence[str]) -> dict[str, float]:
    """Each update's cosine similarity with the coordinate-wise median of all of them.

    Reads every update once more, one key at a time (one array per site for that key, as the
    median strategy does). Sums are in float64.

    Args:
        readers: the round's finite updates.
        keys: the averaged keys; a key some update lacks, and non-float keys, are skipped.

    Returns:
        ``{site: cosine}``; NaN for an update (or a median) of norm 0.
    """
    k = len(readers)
    dots = np.zeros(k, dtype=np.float64)
    squares = np.zeros(k, dtype=np.float64)
    median_square = 0.0
    rows = np.empty((k, _CHUNK), dtype=np.float64)  # reused: no allocation per block
    work = np.empty((k, _CHUNK), dtype=np.float64)
    for key in keys:
        try:
            values = [reader.get(key) for reader in readers]
        except KeyError:
            continue  # the strategy reports the missing key with its own message
        if any(v.dtype.kind != "f" for v in values):
            continue
        flats = [v.reshape(-1) for v in values]
        size = flats[0].size
        if any(f.size != size for f in flats):
            continue  # a shape mismatch: the strategy refuses it with its own message
        for start in range(0, size, _CHUNK):
            stop = min(size, start + _CHUNK)
            block = rows[:, : stop - start]
            for i, flat in enumerate(flats):
                block[i] = flat[start:stop]
            median = column_median(block, work[:, : stop - start])
            dots += block @ median
            squares += np.einsum("ij,ij->i", block, block)
            median_square += float(median @ median)
    out: dict[str, float] = {}
    for i, reader in enumerate(readers):
        denominator = math.sqrt(float(squares[i]) * median_square)
        out[reader.site_id] = float(dots[i]) / denominator if denominator > 0 else math.nan
    return out


def row_median_cosines(rows: np.ndarray, squares: Sequence[float]) -> list[float]:
    """``median_cosines`` over a difference matrix (one float32 row per update).

    The same quantity as the per-key pass, without its per-key work: the median runs over
    blocks of columns sized to stay in cache, in float32 (each median value is one of the
    rows' values, or the mean of two), and each block's dot products are summed in float64.

    Args:
        rows: K x N float32, one update per row (``aggregator.rounds.diff_matrix``).
        squares: each row's squared L2 norm (the safeguards computed it already).

    Returns:
        Each row's cosine with the median row; NaN for a row (or a median) of norm 0.
    """
    k, n = rows.shape
    chunk = max(256, min(_CHUNK, _BLOCK_VALUES // max(k, 1)))
    dots = np.zeros(k, dtype=np.float64)
    median_square = 0.0
    work = np.empty((k, chunk), dtype=rows.dtype)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        block = rows[:, start:stop]
        median = column_median(block, work[:, : stop - start])
        dots += block @ median
        median_square += float(median @ median)
    out = []
    for i in range(k):
        denominator = math.sqrt(float(squares[i]) * median_square)
        out.append(float(dots[i]) / denominator if denominator > 0 else math.nan)
    return out


def column_median(block: np.ndarray, work: np.ndarray | None = None) -> np.ndarray:
    """``np.median(block, axis=0)`` of finite values (K x n), several times faster for small K.

    Up to ``_NETWORK_MAX`` rows an odd-even transposition network (element-wise minimum and
    maximum of whole rows, in ``work``) orders each column; beyond that the columns are sorted.
    Either way the middle value (odd K) or the mean of the two middle ones (even K) is
    ``np.median``'s number, bit for bit.

    Args:
        block: K x n values.
        work: a K x n scratch array (overwritten). Default None (allocated).
    """
    k = block.shape[0]
    if k > _NETWORK_MAX:
        ordered = np.sort(block, axis=0)
    else:
        ordered = work if work is not None else np.empty_like(block)
        ordered[...] = block
        for p in range(k):  # compare-exchange rows (p%2, p%2+1), (p%2+2, p%2+3), ...
            low, high = ordered[p % 2 : k - 1 : 2], ordered[p % 2 + 1 : k : 2]
            smaller = np.minimum(low, high)
            np.maximum(low, high, out=high)
            low[...] = smaller
    if k % 2:
        return ordered[k // 2].copy()
    return np.add(ordered[k // 2 - 1], ordered[k // 2]) / 2


def opposing_updates(cosines: dict[str, float], *, min_cosine: float) -> dict[str, float]:
    """The updates to leave out: below ``min_cosine``, lowest first, at most a minority.

    Args:
        cosines: ``{site: cosine with the median}`` of the round's K updates.
        min_cosine: the threshold.

    Returns:
        ``{site: cosine}`` of the updates to leave out (empty below ``MIN_UPDATES`` updates).
    """
    if len(cosines) < MIN_UPDATES:
        return {}
    below = sorted((c, site) for site, c in cosines.items() if not math.isnan(c) and c < min_cosine)
    return {site: c for c, site in below[: (len(cosines) - 1) // 2]}
