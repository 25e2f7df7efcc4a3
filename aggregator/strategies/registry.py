"""Strategy names and parameters: ``build_strategy(name, params)`` from an experiment's JSON.

| name | combiner | server step | params (default) |
|---|---|---|---|
| ``fedavg`` | weighted mean | ``θ + η Δ̄`` | ``server_lr`` (1.0) |
| ``fedavgm`` | weighted mean | momentum | ``server_lr`` (1.0), ``momentum`` (0.9) |
| ``fedadam`` | weighted mean | Adam | ``server_lr`` (0.01), ``beta1`` (0.9), ``beta2`` (0.99), ``tau`` (1e-3) |
| ``fedyogi`` | weighted mean | Yogi | as ``fedadam`` |
| ``median`` | coordinate-wise median | ``θ + Δ̄`` | none |
| ``trimmed_mean`` | trimmed mean | ``θ + Δ̄`` | ``trim_fraction`` (0.1), cut per side |

The weighted mean weighs sites by ``num_samples``; the median and the trimmed mean ignore it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from aggregator.strategies.combiners import CoordinateMedian, TrimmedMean, WeightedMean
from aggregator.strategies.contract import StrategyError
from aggregator.strategies.engine import FedStrategy
from aggregator.strategies.server_optimizers import (
    ServerAdaptive,
    ServerMomentum,
    ServerSGD,
)

# name -> (lower bound, lower inclusive, upper bound, upper inclusive)
_RANGES: dict[str, tuple[float, bool, float, bool]] = {
    "server_lr": (0.0, False, math.inf, False),
    "momentum": (0.0, True, 1.0, False),
    "beta1": (0.0, True, 1.0, False),
    "beta2": (0.0, True, 1.0, False),
    "tau": (0.0, False, math.inf, False),
    "trim_fraction": (0.0, True, 0.5, False),
}

_ADAPTIVE = {"server_lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}

DEFAULTS: dict[str, dict[str, float]] = {
    "fedavg": {"server_lr": 1.0},
    "fedavgm": {"server_lr": 1.0, "momentum": 0.9},
    "fedadam": dict(_ADAPTIVE),
    "fedyogi": dict(_ADAPTIVE),
    "median": {},
    "trimmed_mean": {"trim_fraction": 0.1},
}
"""Every strategy name with its parameters and their defaults."""

_BUILDERS: dict[str, Callable[[dict[str, float]], FedStrategy]] = {
    "fedavg": lambda p: FedStrategy("fedavg", WeightedMean(), ServerSGD(**p), p),
    "fedavgm": lambda p: FedStrategy("fedavgm", WeightedMean(), ServerMomentum(**p), p),
    "fedadam": lambda p: FedStrategy("fedadam", WeightedMean(), ServerAdaptive(yogi=False, **p), p),
    "fedyogi": lambda p: FedStrategy("fedyogi", WeightedMean(), ServerAdaptive(yogi=True, **p), p),
    "median": lambda p: FedStrategy("median", CoordinateMedian(), ServerSGD(), p),
    "trimmed_mean": lambda p: FedStrategy("trimmed_mean", TrimmedMean(**p), ServerSGD(), p),
}


def _check_value(strategy: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StrategyError(
            f"strategy {strategy!r}: parameter {name!r} must be a number, got {value!r}"
        )
    low, low_in, high, high_in = _RANGES[name]
    x = float(value)
    ok = (
        math.isfinite(x)
        and (x >= low if low_in else x > low)
        and (x <= high if high_in else x < high)
    )
    if not ok:
        interval = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
        raise StrategyError(
            f"strategy {strategy!r}: parameter {name!r} must be in {interval}, got {value!r}"
        )
    return x


def build_strategy(name: str, params: Mapping[str, Any] | None = None) -> FedStrategy:
    """Build an aggregation strategy from its registry name and JSON parameters.

    Args:
        name: one of ``fedavg``, ``fedavgm``, ``fedadam``, ``fedyogi``, ``median``,
            ``trimmed_mean``. Example: ``"fedyogi"``.
        params: parameters of that strategy (see the module table); missing ones take their
            defaults. Default ``None`` (all defaults). Example: ``{"server_lr": 0.03, "tau": 1e-4}``.

    Returns:
        A strategy with ``name``, ``params`` and ``aggregate``; pass it to
        ``aggregate_streaming`` for flat-memory aggregation.

    Raises:
        StrategyError: unknown name, unknown parameter, non-numeric or out-of-range value.
    """
    if name not in DEFAULTS:
        raise StrategyError(
            f"unknown aggregation strategy {name!r}; expected one of {sorted(DEFAULTS)}"
        )
    if params is not None and not isinstance(params, Mapping):
        raise StrategyError(
            f"strategy {name!r}: params must be a JSON object, got {type(params).__name__}"
        )
    given = dict(params or {})
    unknown = sorted(set(given) - set(DEFAULTS[name]))
    if unknown:
        allowed = sorted(DEFAULTS[name]) or "none"
        raise StrategyError(
            f"strategy {name!r} has no parameter(s) {unknown}; allowed parameters: {allowed}"
        )
    resolved = {k: _check_value(name, k, given.get(k, d)) for k, d in DEFAULTS[name].items()}
    return _BUILDERS[name](resolved)
