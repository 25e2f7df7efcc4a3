"""The contract between the orchestrator and the aggregation strategies: updates, readers, errors.

A strategy is pure maths over named numpy tensors: it never reads files or talks to a database.
The orchestrator hands it either whole updates (:class:`ClientUpdate`) or lazy per-key readers
(:class:`UpdateReader`) and persists the server state it returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


class StrategyError(ValueError):
    """An unknown strategy, bad parameters, or updates that cannot be aggregated together.

    The message says what was expected and what was received.
    """


@dataclass(frozen=True)
class ClientUpdate:
    """One accepted site update held in memory.

    Args:
        site_id: the site the update comes from; sites are ordered by it internally, so the
            result does not depend on the order updates are passed in. Example: ``"site-3"``.
        num_samples: training samples behind the update (FedAvg weight); ``>= 0``.
            Example: ``120``.
        tensors: pseudo-gradients ``Δ_i = W_i − θ`` by state-dict key. Keys the experiment keeps
            local (FedBN) may be absent. Example: ``{"conv.weight": np.zeros((8, 1, 3, 3, 3))}``.
    """

    site_id: str
    num_samples: int
    tensors: Mapping[str, np.ndarray]


@runtime_checkable
class UpdateReader(Protocol):
    """A lazily read site update: one tensor at a time (e.g. a memory-mapped safetensors file).

    Attributes:
        site_id: as in :class:`ClientUpdate`.
        num_samples: as in :class:`ClientUpdate`.
    """

    site_id: str
    num_samples: int

    def get(self, key: str) -> np.ndarray:
        """The difference ``W_i − θ`` for one state-dict key; raises ``KeyError`` if absent."""
        ...


class Strategy(Protocol):
    """A server aggregation rule (FedAvg, FedAdam, median, ...).

    Attributes:
        name: registry name, e.g. ``"fedavg"``.
    """

    name: str

    def aggregate(
        self,
        global_weights: Mapping[str, np.ndarray],
        updates: Sequence[ClientUpdate],
        state: dict[str, np.ndarray],
        local_keys: frozenset[str],
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Combine site updates into the next global model.

        Args:
            global_weights: the global model ``θ`` the sites started from.
            updates: accepted updates of the round, in any order.
            state: server state returned by the previous round (``{}`` in round 1).
            local_keys: keys never averaged (FedBN norm layers): the global keeps its value.

        Returns:
            ``(new_global, new_state)``; the inputs are not modified.
        """
        ...


class MappingReader:
    """Adapts an in-memory :class:`ClientUpdate` to the :class:`UpdateReader` protocol.

    Args:
        update: the update to read from. Example: ``MappingReader(ClientUpdate("a", 10, {...}))``.
    """

    def __init__(self, update: ClientUpdate) -> None:
        self.site_id = update.site_id
        self.num_samples = update.num_samples
        self._tensors = update.tensors

    def get(self, key: str) -> np.ndarray:
        return self._tensors[key]
