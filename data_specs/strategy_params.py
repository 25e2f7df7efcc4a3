"""Server strategy names, their parameters, defaults and ranges: the rules both sides check.

The researcher's ``StrategyConfig`` (``data_specs``) validates against this table before an
experiment is stored, and ``aggregator.strategies.build_strategy`` resolves the same table into
a strategy; so the rules are written once, below the aggregator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from data_specs.errors import DataSpecError


class StrategyParamsError(DataSpecError, ValueError):
    """An unknown strategy name, an unknown parameter, or a value out of its range."""


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


def _check_value(strategy: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StrategyParamsError(
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
        raise StrategyParamsError(
            f"strategy {strategy!r}: parameter {name!r} must be in {interval}, got {value!r}"
        )
    return x


def resolve_strategy_params(name: str, params: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Every parameter of strategy ``name``: the given ones checked, the rest at their defaults.

    Args:
        name: a key of ``DEFAULTS``. Example: ``"fedadam"``.
        params: the experiment's parameters. Default None (all defaults).
            Example: ``{"server_lr": 0.03}``.

    Raises:
        StrategyParamsError: unknown name, unknown parameter, non-numeric or out-of-range value.
    """
    if name not in DEFAULTS:
        raise StrategyParamsError(
            f"unknown aggregation strategy {name!r}; expected one of {sorted(DEFAULTS)}"
        )
    if params is not None and not isinstance(params, Mapping):
        raise StrategyParamsError(
            f"strategy {name!r}: params must be a JSON object, got {type(params).__name__}"
        )
    given = dict(params or {})
    unknown = sorted(set(given) - set(DEFAULTS[name]))
    if unknown:
        allowed = sorted(DEFAULTS[name]) or "none"
        raise StrategyParamsError(
            f"strategy {name!r} has no parameter(s) {unknown}; allowed parameters: {allowed}"
        )
    return {k: _check_value(name, k, given.get(k, d)) for k, d in DEFAULTS[name].items()}
