"""Aggregation strategies: pure maths over named numpy tensors, no I/O.

Usage::

    strategy = build_strategy("fedadam", {"server_lr": 0.01})
    new_global, state = strategy.aggregate(global_weights, updates, state, local_keys)
    # or, reading one key of every site at a time:
    new_global, state = aggregate_streaming(strategy, global_weights, readers, state, local_keys)

Updates are pseudo-gradients ``Δ_i = W_i − θ``; sites are ordered by ``site_id`` so results
depend only on the inputs. See ``registry`` for names and parameters, ``engine`` for how
local (FedBN) keys and integer tensors are treated.
"""

from __future__ import annotations

from aggregator.strategies.contract import (
    ClientUpdate,
    MappingReader,
    Strategy,
    StrategyError,
    UpdateReader,
)
from aggregator.strategies.engine import FedStrategy, aggregate_streaming
from aggregator.strategies.registry import build_strategy
from data_specs.strategy_params import DEFAULTS

__all__ = [
    "DEFAULTS",
    "ClientUpdate",
    "FedStrategy",
    "MappingReader",
    "Strategy",
    "StrategyError",
    "UpdateReader",
    "aggregate_streaming",
    "build_strategy",
]
