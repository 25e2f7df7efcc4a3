"""Central DP-FedAvg on the aggregator: a noisy fixed-denominator mean, the budget, ε per round.

Sites clip their updates to ``C`` (the intake refuses any above ``update_norm_bound``, which a
DP experiment sets to ``C``); here the sum of the accepted updates gets ``N(0, (z·C)²)`` per
coordinate and is divided by the number of sites *sampled* (not the number that answered), so
one site moves the average by at most ``C / m`` whatever the others do. Sample counts are not
used as weights: with them one site's influence would be bounded by its share of the samples,
which the accountant cannot know in advance. The chosen strategy's server optimiser (FedAvg's
step, FedAdam, ...) then acts on the noisy average, which is post-processing.

The budget and the ε reported per round are in ``aggregator.privacy.privacy_budget``. The noise comes from the operating system's randomness, not from the experiment seed (the
researcher knows the seed and could otherwise subtract it), so a DP round is not bit-for-bit
reproducible after a crash in the middle of its aggregation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aggregator.strategies import StrategyError, build_strategy
from aggregator.strategies.combiners import accumulator_dtype, read_diff
from aggregator.strategies.contract import UpdateReader
from aggregator.strategies.engine import FedStrategy
from data_specs.privacy import DPConfig, DPMode, PrivacyConfig
from data_specs.privacy.dp import central_noise_std
from data_specs.researcher.privacy_rules import MEAN_STRATEGIES as _MEAN_STRATEGIES


@dataclass(frozen=True)
class CentralNoise:
    """What the server adds in one round: ``N(0, (z·C/m)²)`` on the mean of ``m`` sampled sites."""

    clip_norm: float
    noise_multiplier: float
    sampled: int

    @property
    def std(self) -> float:
        return central_noise_std(self.noise_multiplier, self.clip_norm, self.sampled)


class NoisyMean:
    """``(Σ_i Δ_i + N(0, (z·C)²)) / m`` per key; sample counts are ignored.

    Args:
        noise: the round's noise parameters.
        rng: the noise source (OS entropy in the service; seeded in tests).
    """

    uses_weights = False

    def __init__(self, noise: CentralNoise, rng: np.random.Generator) -> None:
        self.noise = noise
        self.rng = rng

    def combine(
        self, key: str, theta: np.ndarray, readers: Sequence[UpdateReader], weights: np.ndarray
    ) -> np.ndarray:
        dtype = accumulator_dtype(theta.dtype)
        acc = np.zeros(theta.shape, dtype=np.float64)
        for reader in readers:
            acc += read_diff(reader, key, theta)
        acc /= self.noise.sampled
        acc += self.rng.standard_normal(theta.shape) * self.noise.std
        return acc.astype(dtype)


def dp_strategy(
    name: str, params: dict[str, float], noise: CentralNoise, rng: np.random.Generator | None = None
) -> FedStrategy:
    """The experiment's strategy with its combiner replaced by :class:`NoisyMean`.

    Raises:
        StrategyError: a strategy whose combiner is not a mean (median, trimmed mean).
    """
    if name not in _MEAN_STRATEGIES:
        raise StrategyError(
            f"client-level DP needs a mean-based strategy {_MEAN_STRATEGIES}, got {name!r}"
        )
    base = build_strategy(name, params)
    combiner = NoisyMean(noise, rng if rng is not None else np.random.default_rng())
    return FedStrategy(f"{name}+dp", combiner, base.optimizer, base.params)


def central_dp(privacy: PrivacyConfig | None) -> DPConfig | None:
    """The DP settings when the server adds the noise, else None."""
    if privacy is None or privacy.dp is None or privacy.dp.mode != DPMode.CENTRAL:
        return None
    return privacy.dp


def round_noise(
    privacy: PrivacyConfig | None, *, sampled: int, clip_norm: float | None = None
) -> CentralNoise | None:
    """The noise of a round that sampled ``sampled`` sites, or None without central DP.

    Args:
        privacy: the experiment's privacy options.
        sampled: sites sampled in the round (the mean's fixed denominator).
        clip_norm: the round's ``C`` when it adapts (``aggregator.privacy.adaptive_clipping``);
            default None: ``dp.clip_norm``.
    """
    from aggregator.privacy.adaptive_clipping import update_noise_multiplier

    dp = central_dp(privacy)
    if dp is None:
        return None
    clip = dp.clip_norm if clip_norm is None else clip_norm
    return CentralNoise(clip, update_noise_multiplier(dp), max(sampled, 1))
