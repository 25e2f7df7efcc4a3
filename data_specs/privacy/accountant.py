"""(ε, δ) of client-level DP-FedAvg from Google's ``dp-accounting`` (RDP accountant).

One round releases the sum of clipped updates plus Gaussian noise of multiplier ``z`` over a
sample of ``m`` of ``K`` sites. Rounds are accounted as Poisson-subsampled Gaussian mechanisms
with ``q = m / K``, composed over rounds. The aggregator samples a fixed-size set rather than
Poisson, so for ``q < 1`` this is the usual approximation (as TensorFlow Federated and Flower
make); for ``q = 1`` (every site every round, the common case with a handful of hospitals) it
is exact. ``dp_accounting`` is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from data_specs.errors import PrivacyError


@dataclass(frozen=True)
class PrivacySpent:
    """The guarantee after some rounds.

    Args:
        rounds: rounds composed. Example: ``10``.
        epsilon_round: ε of one round on its own, at ``delta``.
        epsilon_total: ε of all ``rounds`` together, at ``delta``.
        delta: δ. Example: ``1e-5``.
    """

    rounds: int
    epsilon_round: float
    epsilon_total: float
    delta: float


def _check(noise_multiplier: float, sample_rate: float, delta: float) -> None:
    if not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
        raise PrivacyError(f"noise multiplier must be > 0, got {noise_multiplier!r}")
    if not 0 < sample_rate <= 1:
        raise PrivacyError(f"sample rate must be in (0, 1], got {sample_rate!r}")
    if not 0 < delta < 1:
        raise PrivacyError(f"delta must be in (0, 1), got {delta!r}")


@functools.lru_cache(maxsize=4096)
def epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """ε after ``rounds`` rounds at ``delta`` (0 for 0 rounds).

    Example: ``epsilon(1.0, 1.0, 10, 1e-5)`` is about 20.
    """
    _check(noise_multiplier, sample_rate, delta)
    if rounds <= 0:
        return 0.0
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sample_rate < 1:
        event = dp_accounting.PoissonSampledDpEvent(sample_rate, event)
    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return float(accountant.get_epsilon(delta))


@functools.lru_cache(maxsize=256)
def epsilons(
    noise_multiplier: float, sample_rate: float, rounds: int, delta: float
) -> tuple[float, ...]:
    """ε after 1, 2, ..., ``rounds`` rounds: the same figures as :func:`epsilon`, in one pass.

    The RDP of ``n`` rounds is ``n`` times the RDP of one (what ``SelfComposedDpEvent`` does),
    so the RDP curve is computed once and only the conversion to ε runs per round (the
    dashboard shows ε after every round of a 200-round run).

    Example: ``epsilons(1.0, 1.0, 3, 1e-5)[-1] == epsilon(1.0, 1.0, 3, 1e-5)``.
    """
    _check(noise_multiplier, sample_rate, delta)
    if rounds <= 0:
        return ()
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sample_rate < 1:
        event = dp_accounting.PoissonSampledDpEvent(sample_rate, event)
    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(event)
    orders, rdp = accountant._orders, accountant._rdp  # one round's RDP curve
    return tuple(
        float(rdp_privacy_accountant.compute_epsilon(orders, n * rdp, delta)[0])
        for n in range(1, rounds + 1)
    )


def spent(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> PrivacySpent:
    """ε of one round and of ``rounds`` rounds together."""
    return PrivacySpent(
        rounds=rounds,
        epsilon_round=epsilon(noise_multiplier, sample_rate, 1, delta),
        epsilon_total=epsilon(noise_multiplier, sample_rate, rounds, delta),
        delta=delta,
    )


@functools.lru_cache(maxsize=1024)
def rounds_within(
    noise_multiplier: float, sample_rate: float, delta: float, budget: float, limit: int
) -> int:
    """The most rounds (at most ``limit``) whose total ε stays within ``budget``.

    Example: ``rounds_within(1.0, 1.0, 1e-5, 8.0, 100)`` is 2 (ε ≈ 7 after two rounds).
    """
    _check(noise_multiplier, sample_rate, delta)
    if budget <= 0:
        raise PrivacyError(f"the privacy budget must be > 0, got {budget!r}")
    lo, hi = 0, limit  # invariant: epsilon(lo) <= budget
    if epsilon(noise_multiplier, sample_rate, hi, delta) <= budget:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if epsilon(noise_multiplier, sample_rate, mid, delta) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def noise_for_budget(
    sample_rate: float, rounds: int, delta: float, budget: float, *, tolerance: float = 1e-3
) -> float:
    """The smallest noise multiplier (within ``tolerance``) that keeps ``rounds`` rounds within
    ``budget`` (bisection on the monotone ``epsilon``)."""
    if budget <= 0 or rounds < 1:
        raise PrivacyError(f"need a budget > 0 and rounds >= 1, got {budget!r} and {rounds!r}")
    lo, hi = 1e-2, 1.0
    while epsilon(hi, sample_rate, rounds, delta) > budget:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise PrivacyError(f"no noise multiplier up to 1e4 reaches ε = {budget}")
    while hi - lo > tolerance:
        mid = round((lo + hi) / 2, 6)
        if epsilon(mid, sample_rate, rounds, delta) > budget:
            lo = mid
        else:
            hi = mid
    return hi
