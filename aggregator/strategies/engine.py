"""Key-by-key aggregation shared by the in-memory and the streaming entry points.

A strategy is a combiner (how sites' differences become one ``Δ̄``) followed by a server
optimiser (how ``Δ̄`` moves ``θ``). Both entry points walk the global model's keys in order and,
for each key, read one tensor per site; in-memory updates are wrapped as readers, so streamed
and in-memory results are the same arithmetic and agree bit for bit.

Key rules:
- keys in ``local_keys`` (FedBN norm layers) are never read from updates; the global keeps a
  copy of its value and no server state is kept for them;
- float tensors go through the combiner and the optimiser;
- integer tensors (``num_batches_tracked``) become ``θ + max_i Δ_i`` whatever the strategy;
- other dtypes (bool) keep ``θ``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise

import numpy as np

from aggregator.strategies.combiners import Combiner, integer_max
from aggregator.strategies.contract import (
    ClientUpdate,
    MappingReader,
    Strategy,
    StrategyError,
    UpdateReader,
)
from aggregator.strategies.server_optimizers import ServerOptimizer


def _ordered(readers: Sequence[UpdateReader]) -> list[UpdateReader]:
    """Readers sorted by ``site_id``, after checking ids and sample counts."""
    if not readers:
        raise StrategyError("no updates to aggregate: expected at least one accepted update")
    ordered = sorted(readers, key=lambda r: r.site_id)
    for before, after in pairwise(ordered):
        if before.site_id == after.site_id:
            raise StrategyError(f"two updates from site {before.site_id!r}; expected one per site")
    for r in ordered:
        n = r.num_samples
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise StrategyError(
                f"site {r.site_id!r}: num_samples must be an integer >= 0, got {n!r}"
            )
    return ordered


def _sample_weights(readers: Sequence[UpdateReader]) -> np.ndarray:
    """``n_i / Σ n`` in float64."""
    counts = np.array([int(r.num_samples) for r in readers], dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        raise StrategyError("cannot weight updates by sample count: every update has num_samples=0")
    return counts / total


class FedStrategy:
    """A named combiner + server optimiser pair; build one with ``build_strategy``.

    Args:
        name: registry name. Example: ``"fedadam"``.
        combiner: per-key combination of the sites' differences.
        optimizer: server step on the combined difference.
        params: the validated parameters, defaults filled in (for logs and the API).
    """

    def __init__(
        self,
        name: str,
        combiner: Combiner,
        optimizer: ServerOptimizer,
        params: Mapping[str, float],
    ) -> None:
        self.name = name
        self.combiner = combiner
        self.optimizer = optimizer
        self.params = dict(params)

    def __repr__(self) -> str:
        return f"FedStrategy({self.name!r}, {self.params})"

    def aggregate(
        self,
        global_weights: Mapping[str, np.ndarray],
        updates: Sequence[ClientUpdate],
        state: dict[str, np.ndarray],
        local_keys: frozenset[str],
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """In-memory aggregation; see ``Strategy.aggregate``.

        Raises:
            StrategyError: no updates, duplicate sites, bad sample counts, unknown or missing
                keys, or shape/dtype mismatches (naming the site and key).
        """
        expected = set(global_weights) - set(local_keys)
        for u in updates:
            unknown = sorted(set(u.tensors) - set(global_weights))
            missing = sorted(expected - set(u.tensors))
            if unknown or missing:
                raise StrategyError(
                    f"update of site {u.site_id!r} does not match the global model: "
                    f"unknown keys {unknown[:10]}, missing keys {missing[:10]}"
                )
        return self.aggregate_readers(
            global_weights, [MappingReader(u) for u in updates], state, local_keys
        )

    def aggregate_readers(
        self,
        global_weights: Mapping[str, np.ndarray],
        readers: Sequence[UpdateReader],
        state: Mapping[str, np.ndarray],
        local_keys: frozenset[str],
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Key-by-key aggregation over lazy readers; see ``aggregate_streaming``."""
        ordered = _ordered(readers)
        weights = (
            _sample_weights(ordered)
            if self.combiner.uses_weights
            else np.full(len(ordered), 1.0 / len(ordered))
        )
        new_global: dict[str, np.ndarray] = {}
        new_state: dict[str, np.ndarray] = {}
        for key, value in global_weights.items():
            theta = np.asarray(value)
            kind = theta.dtype.kind
            if key in local_keys or kind not in "fiu":
                new_global[key] = theta.copy()
            elif kind == "f":
                delta = self.combiner.combine(key, theta, ordered, weights)
                new_global[key] = self.optimizer.step(key, theta, delta, state, new_state)
            else:
                new_global[key] = integer_max(key, theta, ordered)
        return new_global, new_state


def aggregate_streaming(
    strategy: Strategy,
    global_weights: Mapping[str, np.ndarray],
    readers: Sequence[UpdateReader],
    state: dict[str, np.ndarray],
    local_keys: frozenset[str],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Aggregate key by key so memory stays flat in the number of sites.

    For each key of ``global_weights`` every reader is asked for that key's tensor in turn;
    the weighted mean holds one accumulator plus one site's tensor at a time, the median and
    the trimmed mean hold that key for every site. Results are bit-identical to
    ``strategy.aggregate`` on the same updates.

    Args:
        strategy: a strategy from ``build_strategy``. Another ``Strategy`` works too, but
            its updates are then read whole into memory first.
        global_weights: the global model ``θ``. Example: ``{"conv.weight": theta}``.
        readers: one lazily read update per accepted site, in any order.
        state: server state from the previous round (``{}`` in round 1).
        local_keys: keys never averaged (FedBN); they are never read from the readers.
            Example: ``frozenset({"norm1.weight"})``.

    Returns:
        ``(new_global, new_state)``.

    Raises:
        StrategyError: as ``aggregate``, plus a reader lacking a key (``KeyError``).
    """
    if isinstance(strategy, FedStrategy):
        return strategy.aggregate_readers(global_weights, readers, state, local_keys)
    wanted = [k for k in global_weights if k not in local_keys]
    try:
        updates = [
            ClientUpdate(r.site_id, r.num_samples, {k: r.get(k) for k in wanted}) for r in readers
        ]
    except KeyError as exc:
        raise StrategyError(f"an update lacks tensor {exc.args[0]!r}") from exc
    return strategy.aggregate(global_weights, updates, state, local_keys)
