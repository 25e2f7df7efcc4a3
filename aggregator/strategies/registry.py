"""Strategy names and parameters: ``build_strategy(name, params)`` from an experiment's JSON.

| name | combiner | server step | params (default; table in ``data_specs.strategy_params``) |
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
from data_specs.strategy_params import StrategyParamsError, resolve_strategy_params

_BUILDERS: dict[str, Callable[[dict[str, float]], FedStrategy]] = {
    "fedavg": lambda p: FedStrategy("fedavg", WeightedMean(), ServerSGD(**p), p),
    "fedavgm": lambda p: FedStrategy("fedavgm", WeightedMean(), ServerMomentum(**p), p),
    "fedadam": lambda p: FedStrategy("fedadam", WeightedMean(), ServerAdaptive(yogi=False, **p), p),
    "fedyogi": lambda p: FedStrategy("fedyogi", WeightedMean(), ServerAdaptive(yogi=True, **p), p),
    "median": lambda p: FedStrategy("median", CoordinateMedian(), ServerSGD(), p),
    "trimmed_mean": lambda p: FedStrategy("trimmed_mean", TrimmedMean(**p), ServerSGD(), p),
}


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
    try:
        resolved = resolve_strategy_params(name, params)
    except StrategyParamsError as exc:
        raise StrategyError(str(exc)) from exc
    return _BUILDERS[name](resolved)
