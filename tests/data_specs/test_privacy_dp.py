"""Client-level DP maths: clipping, noise, adaptive clipping, the accountant and the config."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from data_specs.errors import PrivacyError
from data_specs.privacy import PrivacyConfig
from data_specs.privacy.accountant import epsilon, noise_for_budget, rounds_within, spent
from data_specs.privacy.dp import (
    AdaptiveClip,
    central_noise_std,
    clip_update,
    effective_noise_multiplier,
    gaussian_noise,
    l2_norm,
    site_noise_std,
    split_noise,
)


def test_clip_scales_the_joint_norm_to_c_and_leaves_skipped_keys() -> None:
    update = {
        "a": np.full(4, 3.0, np.float32),
        "b": np.full(1, 4.0, np.float32),
        "bn": np.full(2, 100.0, np.float32),
        "n": np.array(5, np.int64),
    }
    result = clip_update(update, 2.0, skip=frozenset({"bn"}))
    assert result.norm == pytest.approx(math.sqrt(4 * 9 + 16))
    assert l2_norm(result.tensors, frozenset({"bn"})) == pytest.approx(2.0, rel=1e-6)
    np.testing.assert_array_equal(result.tensors["bn"], update["bn"])
    assert result.tensors["n"] == 5 and result.tensors["a"].dtype == np.float32
    assert not result.unclipped


def test_an_update_within_the_bound_is_untouched() -> None:
    update = {"a": np.array([0.3, 0.4], np.float32)}
    result = clip_update(update, 1.0)
    assert result.unclipped and result.factor == 1.0
    np.testing.assert_array_equal(result.tensors["a"], update["a"])
    with pytest.raises(PrivacyError):
        clip_update(update, 0.0)
    with pytest.raises(PrivacyError, match="NaN"):
        clip_update({"a": np.array([np.inf], np.float32)}, 1.0)


def test_distributed_noise_sums_to_the_central_noise() -> None:
    z, c, m = 1.3, 0.7, 5
    rng = np.random.default_rng(0)
    sums = sum(
        gaussian_noise({"w": (200_000,)}, site_noise_std(z, c, m), rng)["w"] for _ in range(m)
    )
    assert np.std(sums) / m == pytest.approx(central_noise_std(z, c, m), rel=0.02)


def test_adaptive_clip_moves_towards_the_target_quantile() -> None:
    rule = AdaptiveClip(target_quantile=0.5, learning_rate=0.2)
    rng = np.random.default_rng(0)
    assert rule.next_clip(1.0, 5, 5, rng) == pytest.approx(math.exp(-0.1))  # all unclipped: shrink
    assert rule.next_clip(1.0, 0, 5, rng) == pytest.approx(math.exp(0.1))  # all clipped: grow
    assert effective_noise_multiplier(1.0, 0.0) == 1.0
    assert effective_noise_multiplier(1.0, 5.0) > 1.0
    with pytest.raises(PrivacyError):
        effective_noise_multiplier(1.0, 0.4)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise_and_sampling() -> None:
    assert epsilon(1.0, 1.0, 0, 1e-5) == 0.0
    e1, e10 = epsilon(1.0, 1.0, 1, 1e-5), epsilon(1.0, 1.0, 10, 1e-5)
    assert 0 < e1 < e10 < 10 * e1
    assert epsilon(2.0, 1.0, 10, 1e-5) < e10
    assert epsilon(1.0, 0.2, 10, 1e-5) < e10
    s = spent(1.0, 1.0, 10, 1e-5)
    assert s.epsilon_round == e1 and s.epsilon_total == e10


def test_gaussian_mechanism_epsilon_is_close_to_the_classical_bound() -> None:
    # One Gaussian release with z = 5: the classical bound gives ε ≈ sqrt(2 ln(1.25/δ)) / z ≈ 0.97;
    # RDP is a little looser than the optimal but of that order.
    assert 0.5 < epsilon(5.0, 1.0, 1, 1e-5) < 1.3


def test_budget_helpers_are_consistent() -> None:
    n = rounds_within(1.5, 1.0, 1e-5, 8.0, 1000)
    assert epsilon(1.5, 1.0, n, 1e-5) <= 8.0 < epsilon(1.5, 1.0, n + 1, 1e-5)
    z = noise_for_budget(1.0, 8, 1e-5, 8.0)
    assert epsilon(z, 1.0, 8, 1e-5) <= 8.0 < epsilon(z * 0.99, 1.0, 8, 1e-5)
    with pytest.raises(PrivacyError):
        rounds_within(1.0, 1.0, 1e-5, -1.0, 10)


def test_distributed_dp_needs_secure_aggregation() -> None:
    with pytest.raises(ValidationError, match="secure_aggregation"):
        PrivacyConfig.model_validate({"dp": {"mode": "distributed"}})
    cfg = PrivacyConfig.model_validate({"dp": {"mode": "distributed"}, "secure_aggregation": {}})
    assert cfg.secure_aggregation is not None and cfg.secure_aggregation.ring_bits == 32


@pytest.mark.parametrize(("z", "share"), [(1.0, 0.1), (1.8, 0.5), (0.5, 0.9)])
def test_split_noise_keeps_the_accounted_multiplier(z: float, share: float) -> None:
    z_update, sigma_b = split_noise(z, share)
    assert z_update > z  # the update gets more noise than the accountant's z ...
    assert z_update**-2 + (2 * sigma_b) ** -2 == pytest.approx(z**-2)  # ... and together: z
    assert effective_noise_multiplier(z, sigma_b) == pytest.approx(z_update)
    with pytest.raises(PrivacyError):
        split_noise(z, 1.0)


def test_adaptive_clip_step_is_the_geometric_update() -> None:
    rule = AdaptiveClip(target_quantile=0.5, learning_rate=0.2, bit_noise_std=0.0)
    rng = np.random.default_rng(0)
    assert rule.noisy_share(3, 4, rng) == 0.75
    assert rule.step(2.0, 0.75) == pytest.approx(2.0 * math.exp(-0.2 * 0.25))
    assert rule.step(2.0, 0.5) == 2.0
