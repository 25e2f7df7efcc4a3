"""Deterministic site sampling and per-task seeds: functions of (seed, round, attempt, site name)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np


def sample_size(num_sites: int, fraction: float, min_sites: int) -> int:
    """⌈C·K⌉ sites, at least ``min_sites``, at most K.

    Args:
        num_sites: K, the participating sites available. Example: ``10``.
        fraction: C in (0, 1]. Example: ``0.3``.
        min_sites: floor. Example: ``2``.

    Returns:
        The number of sites to sample, e.g. 3 for K=10, C=0.3, min_sites=2.
    """
    # round() first so that 0.1 * 30 does not become 4 through 3.0000000000000004.
    return min(num_sites, max(min_sites, math.ceil(round(fraction * num_sites, 9))))


def sample_sites(
    participants: Sequence[str],
    *,
    fraction: float,
    min_sites: int,
    seed: int,
    round_number: int,
    attempt: int,
) -> list[str]:
    """The sites of one round attempt, sorted by id; the same inputs always give the same sites.

    Args:
        participants: ids of the participating sites (any order).
        fraction: C.
        min_sites: floor on the sample size.
        seed: the experiment seed.
        round_number: r (1-based).
        attempt: 0 for the first try, 1.. for retries.

    Returns:
        Sorted site ids.
    """
    pool = sorted(participants)
    k = sample_size(len(pool), fraction, min_sites)
    if k >= len(pool):
        return pool
    rng = np.random.default_rng([seed, round_number, attempt])
    picked = rng.choice(len(pool), size=k, replace=False)
    return sorted(pool[int(i)] for i in picked)


def derive_seed(seed: int, round_number: int, site_id: str) -> int:
    """Training seed of one site in one round, in [0, 2**31).

    Args:
        seed: the experiment seed.
        round_number: r.
        site_id: the site.
    """
    digest = hashlib.sha256(f"{seed}:{round_number}:{site_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
