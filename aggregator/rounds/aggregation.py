"""One round's aggregation from stored blobs: lazy per-key readers fed to ``aggregate_streaming``.

Memory stays flat in the number of sites: the global model and the new one are in memory, each
update is a memory-mapped file read one tensor at a time. Full updates become differences
``W - θ`` on the fly. The inputs are sorted by their key (the site name), so the same inputs give
the same bits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from aggregator.errors import AggregationError
from aggregator.rounds import diff_matrix
from aggregator.rounds.diff_matrix import DiffMatrix
from aggregator.rounds.guards.safeguards import GuardReport, guard_readers, require_finite
from aggregator.storage.blobs import BlobRef, BlobStore
from aggregator.storage.bundle_views import BundleViews
from aggregator.storage.global_models import load_state, load_weights, store_global, store_state
from data_specs.constants import BundleKind
from data_specs.errors import BundleError

if TYPE_CHECKING:
    from aggregator.privacy.dp_aggregation import CentralNoise


@dataclass(frozen=True)
class UpdateInput:
    """An accepted update as the orchestrator hands it over.

    Args:
        site_id: the site's key in the aggregation order: its name, which unlike its random id
            is the same in every deployment of the experiment.
        num_samples: its sample count (FedAvg weight).
        sha256: the blob to read (the decoded copy for compressed uploads).
    """

    site_id: str
    num_samples: int
    sha256: str


@dataclass(frozen=True)
class RoundResult:
    """What aggregation stored: the next global model and the server state."""

    model: BlobRef
    state: BlobRef | None


class BundleUpdateReader:
    """``UpdateReader`` over a stored bundle: ``get(key)`` is that site's ``W - θ`` for one key.

    Reads a zero-copy view of the memory-mapped file and writes the difference into one fresh
    array (one read pass, one write pass per key).

    Args:
        site_id: the site.
        num_samples: its sample count.
        views: the update file's tensors.
        theta: the global model the update was trained from.
    """

    def __init__(
        self,
        site_id: str,
        num_samples: int,
        views: BundleViews,
        theta: Mapping[str, np.ndarray],
        *,
        remember: bool = False,
    ) -> None:
        self.site_id = site_id
        self.num_samples = num_samples
        self._views = views
        self._full = views.meta.kind == BundleKind.FULL
        self._theta = theta
        self._remembered: dict[str, np.ndarray] | None = {} if remember else None
        self._matrix: DiffMatrix | None = None
        self._row = 0

    @property
    def views(self) -> BundleViews:
        """The update file's tensors."""
        return self._views

    def use_matrix(self, matrix: DiffMatrix, row: int) -> None:
        """Read the matrix's columns from ``matrix.rows[row]`` (computed once, read-only views)."""
        self._matrix, self._row = matrix, row

    def get(self, key: str) -> np.ndarray:
        if self._matrix is not None and key in self._matrix.columns:
            return self._matrix.view(self._row, key)
        if self._remembered is None:
            return self._difference(key)
        # The safeguards' passes and the strategy read each key up to three times: with
        # ``remember`` the difference is computed once (the same array, the same bits).
        diff = self._remembered.get(key)
        if diff is None:
            diff = self._remembered[key] = self._difference(key)
        return diff

    def _difference(self, key: str) -> np.ndarray:
        ref = self._theta[key]
        value = self._views[key]  # KeyError for a missing key, as the protocol asks
        if value.shape != ref.shape:  # intake checks layouts: only a store changed under us
            raise BundleError(
                f"update of site {self.site_id!r}: {key!r} has shape {value.shape}, "
                f"expected {ref.shape} like the global model"
            )
        if value.dtype != ref.dtype:
            value = value.astype(ref.dtype)  # float16 on the wire
        if self._full:
            return np.subtract(value, ref, dtype=ref.dtype)
        return np.array(value, dtype=ref.dtype)  # a private copy: strategies may keep it


REMEMBER_BYTES = 256 << 20
"""Rounds whose differences fit in this many bytes compute each difference once."""


def open_readers(
    blobs: BlobStore,
    updates: Sequence[UpdateInput],
    theta: Mapping[str, np.ndarray],
    keys: Sequence[str] = (),
) -> tuple[list[BundleUpdateReader], DiffMatrix | None]:
    """One reader per stored update, and the round's difference matrix where it applies.

    When all the round's differences fit in ``REMEMBER_BYTES``, the averaged float32 keys
    (``keys``) are computed at once into a ``DiffMatrix`` (``aggregator.rounds.diff_matrix``)
    and each reader keeps any other difference it computes for the later passes; larger rounds
    stream key by key, reading no tensor here.

    Raises:
        BundleError: a stored update is not a well-formed bundle.
    """
    remember = len(updates) * sum(v.nbytes for v in theta.values()) <= REMEMBER_BYTES
    readers = [
        BundleUpdateReader(
            u.site_id,
            u.num_samples,
            BundleViews(blobs.require(u.sha256)),
            theta,
            remember=remember,
        )
        for u in updates
    ]
    matrix = diff_matrix.build([r.views for r in readers], theta, keys) if remember else None
    if matrix is not None:
        for row, reader in enumerate(readers):
            reader.use_matrix(matrix, row)
    return readers, matrix


def aggregate_updates(
    blobs: BlobStore,
    *,
    strategy_name: str,
    strategy_params: Mapping[str, Any],
    global_sha256: str,
    state_sha256: str | None,
    updates: Sequence[UpdateInput],
    local_keys: frozenset[str],
    verify: bool = True,
    noise: CentralNoise | None = None,
    robust_norm_multiple: float | None = None,
    min_update_cosine: float | None = None,
    report: list[GuardReport] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Aggregate stored updates into new global weights and server state (nothing is written).

    Args:
        blobs: the store.
        strategy_name: registry name. Example: ``"fedavg"``.
        strategy_params: its parameters.
        global_sha256: θ, the model the sites trained from.
        state_sha256: server state after the previous round, or None.
        updates: accepted updates (any order; sorted by site id here).
        local_keys: keys kept from θ (FedBN).
        verify: re-hash every input blob first (catches on-disk corruption). Default True.
        noise: central DP: a noisy fixed-denominator mean replaces the strategy's combiner
            (``aggregator.privacy.dp_aggregation``). Default None.
        robust_norm_multiple: clip updates above this multiple of the median norm (see
            ``aggregator.rounds.guards.safeguards``); updates with a non-finite difference are always left
            out. Default None (no clipping).
        min_update_cosine: leave out updates whose cosine similarity with the round's
            coordinate-wise median update is below this (3 or more updates; at most a
            minority). Ignored under central DP (``noise``): a drop that depends on the other
            sites' updates is outside the DP analysis. Default None (no direction check).
        report: when given, the safeguards' ``GuardReport`` is appended to it.

    Raises:
        AggregationError: no updates, or the strategy refused them.
        StorageError: a blob is missing or corrupt.
    """
    from aggregator.privacy.dp_aggregation import dp_strategy
    from aggregator.strategies import StrategyError, aggregate_streaming, build_strategy

    if not updates:
        raise AggregationError("no accepted updates to aggregate")
    ordered = sorted(updates, key=lambda u: u.site_id)
    if verify:
        blobs.verify_many([global_sha256, *(u.sha256 for u in ordered)])
    theta = load_weights(blobs.require(global_sha256))
    state = load_state(blobs, state_sha256)
    try:
        if noise is None:
            strategy = build_strategy(strategy_name, dict(strategy_params))
        else:
            strategy = dp_strategy(strategy_name, dict(strategy_params), noise)
        keys = [k for k in theta if k not in local_keys]
        readers, matrix = open_readers(blobs, ordered, theta, keys)
        guarded, guard = guard_readers(
            readers,
            keys,
            robust_norm_multiple=robust_norm_multiple,
            min_update_cosine=min_update_cosine if noise is None else None,
            matrix=matrix,
        )
        if report is not None:
            report.append(guard)
        new_global, new_state = aggregate_streaming(strategy, theta, guarded, state, local_keys)
    except (StrategyError, BundleError) as exc:
        raise AggregationError(f"aggregation failed: {exc}") from exc
    require_finite(new_global)
    require_finite(new_state)
    return new_global, new_state


def aggregate_round(
    blobs: BlobStore,
    *,
    spec_hash: str,
    round_number: int,
    strategy_name: str,
    strategy_params: Mapping[str, Any],
    global_sha256: str,
    state_sha256: str | None,
    updates: Sequence[UpdateInput],
    local_keys: frozenset[str],
    noise: CentralNoise | None = None,
    robust_norm_multiple: float | None = None,
    min_update_cosine: float | None = None,
    report: list[GuardReport] | None = None,
    class_names: Sequence[str] | None = None,
) -> RoundResult:
    """Aggregate and store the global model of ``round_number`` (idempotent: same inputs, same blob).

    ``class_names`` (the experiment's, background first) go into the stored bundle's metadata.

    Raises:
        AggregationError: the strategy refused the updates, none was finite, or the aggregate
            is not finite (nothing is stored then).
        StorageError: a blob is missing or corrupt.
    """
    new_global, new_state = aggregate_updates(
        blobs,
        strategy_name=strategy_name,
        strategy_params=strategy_params,
        global_sha256=global_sha256,
        state_sha256=state_sha256,
        updates=updates,
        local_keys=local_keys,
        noise=noise,
        robust_norm_multiple=robust_norm_multiple,
        min_update_cosine=min_update_cosine,
        report=report,
    )
    model = store_global(
        blobs, new_global, spec_hash=spec_hash, round_number=round_number, class_names=class_names
    )
    return RoundResult(model=model, state=store_state(blobs, new_state))
