"""Aggregation of a secure-aggregation round: unmask the running sum, then the strategy's step.

The round is ``aggregating`` once uploads are closed; surviving sites then send their unmask
answers. This waits until every site in the sum has answered, or ``unmask_wait_s`` has passed
since unmasking began with at least ``threshold`` answers; with fewer after that time the round
fails (and is retried like any failed aggregation). The unmasked sum gives the weighted mean
``Σ n_i Δ_i / Σ n_i`` (or, under distributed DP, the sum over the ``m`` sampled sites), which
the experiment's strategy applies as one pseudo-update.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
from sqlalchemy import select

from aggregator.crud import experiments as exp_crud
from aggregator.errors import AggregationError, require_row
from aggregator.privacy.secagg_protocol import restore_server, task_setup
from aggregator.rounds.aggregation import RoundResult
from aggregator.storage.blobs import BlobStore
from aggregator.storage.db import Database, Round, SecAggEntry, SecAggSum, Task
from aggregator.storage.global_models import load_state, load_weights, store_global, store_state
from data_specs.errors import PrivacyError
from data_specs.privacy.ring import decode_mean
from data_specs.privacy.secagg_common import UnmaskResponse
from data_specs.privacy.secagg_wire import flat_keys, from_index, unflatten


def secure_aggregation_on(cfg: object) -> bool:
    privacy = getattr(cfg, "privacy", None)
    return privacy is not None and privacy.secure_aggregation is not None


def secagg_aggregate_round(
    database: Database,
    blobs: BlobStore,
    *,
    round_id: str,
    global_sha256: str,
    state_sha256: str | None,
    now: datetime,
) -> RoundResult | None:
    """The stored new global model, or None while unmask answers may still come.

    Raises:
        AggregationError: no masked upload, too few answers in time, or shares that do not
            unmask.
    """
    with database.session() as session:
        rnd = session.get(Round, round_id)
        rnd = require_row(rnd, "round")
        experiment = exp_crud.get_experiment(session, experiment_id=rnd.experiment_id)
        cfg = exp_crud.config_of(experiment)
        sa = cfg.privacy.secure_aggregation if cfg.privacy else None
        sa = require_row(sa, "secure aggregation config")
        total_row = session.get(SecAggSum, round_id)
        if total_row is None:
            raise AggregationError("no masked vector reached the running sum")
        entries = {
            e.site_index: e
            for e in session.scalars(select(SecAggEntry).where(SecAggEntry.round_id == round_id))
        }
        any_task = session.scalars(select(Task).where(Task.round_id == round_id)).first()
        any_task = require_row(any_task, "a task of the round")
        setup = task_setup(cfg, rnd, any_task)
        setup = require_row(setup, "secure aggregation setup")
        uploaded = {i for i, e in entries.items() if e.masked}
        answered = {i for i, e in entries.items() if e.masked and e.unmask is not None}
        if total_row.unmask_started_at is None:
            total_row.unmask_started_at = now
            session.commit()
        waited = (now - total_row.unmask_started_at).total_seconds()
        if answered != uploaded and waited < sa.unmask_wait_s:
            return None
        if len(answered) < setup.threshold:
            raise AggregationError(
                f"{len(answered)} unmask answer(s) within {sa.unmask_wait_s:g} s, "
                f"{setup.threshold} needed"
            )
        server = restore_server(entries, setup)
        dtype = np.dtype("<u4" if setup.ring_bits == 32 else "<u8")
        ring_sum = np.frombuffer(blobs.require(total_row.sum_sha256).read_bytes(), dtype=dtype)
        server.restore_sum(ring_sum.astype(setup.params().scale.dtype), uploaded)
        for i in sorted(answered):
            ans = entries[i].unmask or {}
            server.receive_unmask(
                UnmaskResponse(i, from_index(ans["seed_shares"]), from_index(ans["key_shares"]))
            )
        expected = exp_crud.expected_of(experiment)
        local_keys = frozenset(experiment.local_keys)
        spec_hash, number = experiment.spec_hash, rnd.number
    try:
        unmasked, _ = server.finish()
        mean, count = decode_mean(unmasked, setup.params().scale)
    except PrivacyError as exc:
        raise AggregationError(f"secure aggregation could not unmask the sum: {exc}") from exc
    if not setup.weighted:  # DP: a fixed denominator, the number of sites sampled
        mean *= count / setup.sites
    keys = flat_keys(expected, local_keys)
    theta = load_weights(blobs.require(global_sha256))
    delta = unflatten(mean, expected, keys)
    for key, value in theta.items():
        if key not in local_keys and key not in delta:
            delta[key] = np.zeros_like(value)  # integer buffers: unchanged
    from aggregator.strategies import ClientUpdate, StrategyError, build_strategy

    try:
        strategy = build_strategy(cfg.strategy.name, dict(cfg.strategy.params))
        new_global, new_state = strategy.aggregate(
            theta,
            [ClientUpdate("secure-sum", 1, delta)],
            load_state(blobs, state_sha256),
            local_keys,
        )
    except StrategyError as exc:
        raise AggregationError(f"aggregation failed: {exc}") from exc
    model = store_global(
        blobs, new_global, spec_hash=spec_hash, round_number=number, class_names=cfg.class_names
    )
    return RoundResult(model=model, state=store_state(blobs, new_state))
