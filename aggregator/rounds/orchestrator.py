"""The round state machine: open, close, aggregate, retry or fail rounds of running experiments.

State lives only in the database and the blob store, so a restarted process picks up where the
killed one stopped: an ``aggregating`` round is recomputed from the same accepted updates (sorted
by site id), giving the same bits. ``step`` is synchronous and runs in a worker thread; ``run``
is the background asyncio task that calls it on a timer or when woken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import anyio
from sqlalchemy.orm import Session

from aggregator.crud import experiments as exp_crud
from aggregator.crud import rounds as round_crud
from aggregator.errors import AggregationError, StorageError, require_row
from aggregator.privacy.adaptive_clipping import advance_clip, round_clip_norm
from aggregator.privacy.dp_aggregation import round_noise
from aggregator.privacy.privacy_budget import (
    record_budget_spent,
    record_sample_budget_spent,
    rounds_allowed,
    sample_budget_over,
)
from aggregator.privacy.secagg_aggregation import secagg_aggregate_round, secure_aggregation_on
from aggregator.rounds.aggregation import RoundResult, UpdateInput, aggregate_round
from aggregator.rounds.guards.safeguards import GuardReport, cap_samples, guard_detail
from aggregator.rounds.round_events import RoundDecision, RoundOutcome, emit
from aggregator.rounds.round_failures import StepFailures
from aggregator.rounds.task_board import TaskBoard
from aggregator.rounds.transitions import (
    complete_experiment,
    fail_experiment,
    open_round,
    site_names,
)
from aggregator.storage.blobs import BlobStore
from aggregator.storage.db import (
    Database,
    Experiment,
    ExperimentStatus,
    GlobalModel,
    Round,
    RoundStatus,
    TaskStatus,
)
from aggregator.storage.db.models import OPEN_TASK_STATES, utcnow
from aggregator.storage.db.relaxed import relax_next_commit
from aggregator.telemetry import AggregatorMetrics
from data_specs.event_kinds import EventKind
from data_specs.researcher.experiments import ExperimentCreate

log = logging.getLogger("aggregator.rounds.orchestrator")
_MAX_TRANSITIONS = 16


class Orchestrator:
    """Advances every running experiment.

    Args:
        database: the database.
        blobs: the blob store.
        metrics: where round outcomes and aggregation times go.
        interval_s: how often ``run`` steps without being woken. Default 1.
        clock: current time (tests pass a fake one). Default ``utcnow``.
    """

    def __init__(
        self,
        *,
        database: Database,
        blobs: BlobStore,
        metrics: AggregatorMetrics,
        interval_s: float = 1.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = database
        self._blobs = blobs
        self._metrics = metrics
        self._interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()  # one step at a time, background or by hand
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._board: TaskBoard | None = None  # set by run: sites are woken mid-step
        self._failures = StepFailures(database, lambda: self.clock())

    # -- asyncio side -----------------------------------------------------------------------

    async def run(self, board: TaskBoard) -> None:
        """Step forever: every ``interval_s`` or as soon as ``wake`` is called.

        The long polls of sites given a task are woken as soon as its round is committed
        (``_advance``), not when the step has finished with every experiment.
        """
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._board = board
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._interval_s)
                self._wake.clear()
                try:
                    await anyio.to_thread.run_sync(self.step)
                except Exception:  # a bug must not stop the rounds of every other experiment
                    log.exception("orchestrator.step_failed")
        finally:
            self._board = None

    def wake(self) -> None:
        """Ask for a step soon (callable from any thread)."""
        if self._loop is not None and self._wake is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    # -- synchronous side -------------------------------------------------------------------

    def step(self) -> set[str]:
        """Advance every running experiment as far as it can go now.

        Returns:
            Ids of sites that got a new task. Under ``run`` their long polls were woken as
            each round was committed; a caller stepping by hand wakes them itself.
        """
        with self._lock:
            with self._db.session() as session:
                ids = exp_crud.running_experiment_ids(session)
            self._metrics.active_experiments.set(len(ids))
            touched: set[str] = set()
            for experiment_id in ids:
                try:
                    touched |= self._advance(experiment_id)
                except Exception as exc:  # bounded: see aggregator.rounds.round_failures
                    self._failures.failed(experiment_id, exc)
                else:
                    self._failures.succeeded(experiment_id)
            return touched

    def _advance(self, experiment_id: str) -> set[str]:
        touched: set[str] = set()
        for _ in range(_MAX_TRANSITIONS):
            changed, sites = self._advance_once(experiment_id)
            touched |= sites
            self._notify(sites)
            if not changed:
                break
        return touched

    def _notify(self, sites: set[str]) -> None:
        """Wake the long polls of ``sites`` now (under ``run``; their tasks are committed)."""
        board, loop = self._board, self._loop
        if sites and board is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(board.notify, list(sites))

    def _advance_once(self, experiment_id: str) -> tuple[bool, set[str]]:
        now = self.clock()
        with self._db.session() as session:
            experiment = session.get(Experiment, experiment_id)
            if experiment is None or experiment.status != ExperimentStatus.RUNNING:
                return False, set()
            cfg = exp_crud.config_of(experiment)
            rnd = round_crud.latest_round(session, experiment_id=experiment_id)
            if rnd is None or rnd.status == RoundStatus.CLOSED:
                limit = rounds_allowed(cfg, len(experiment.participants or []))
                over = None if rnd is None else sample_budget_over(session, cfg, rnd.id)
                if over is not None:  # a site's DP-SGD budget cannot take one more round
                    limit = min(limit, experiment.current_round)
                if experiment.current_round >= limit:
                    if over is not None:
                        record_sample_budget_spent(session, experiment, cfg, over)
                    elif limit < cfg.rounds:  # the DP budget ran out first
                        record_budget_spent(session, experiment, cfg)
                    complete_experiment(session, experiment, now)
                    session.commit()
                    return True, set()
                number = experiment.current_round + 1
                sites = open_round(session, self._blobs, experiment, cfg, number, 0, now)
                session.commit()
                return True, sites
            if rnd.status == RoundStatus.OPEN:
                decision, sites = self._close_if_due(session, experiment, cfg, rnd, now)
                session.commit()
                if decision != RoundDecision.AGGREGATE:
                    return decision != RoundDecision.WAIT, sites
            elif rnd.status != RoundStatus.AGGREGATING:
                return False, set()
            round_id = rnd.id
        # Aggregating: a fresh start, or a restart after a crash mid-aggregation.
        return True, self._aggregate(experiment_id, round_id)

    def _close_if_due(
        self,
        session: Session,
        experiment: Experiment,
        cfg: ExperimentCreate,
        rnd: Round,
        now: datetime,
    ) -> tuple[RoundDecision, set[str]]:
        """``WAIT``, ``AGGREGATE`` (round claimed) or ``RETRIED``/``FAILED``."""
        pending = round_crud.has_tasks(session, round_id=rnd.id, statuses=OPEN_TASK_STATES)
        if pending and now < rnd.deadline_at:
            return RoundDecision.WAIT, set()
        if (
            round_crud.count_tasks(session, round_id=rnd.id, statuses=[TaskStatus.ACCEPTED])
            >= cfg.min_sites
        ):
            # It will aggregate (uploads only add accepted tasks): its claim needs no fsync of
            # its own. Lost in a power cut, the round is open again and the next step claims
            # it again; the close's full commit makes the claim durable with it.
            relax_next_commit(session)
        # Claim first: from here no upload can land, so the count below is final.
        if not round_crud.claim_round(
            session,
            round_id=rnd.id,
            from_status=RoundStatus.OPEN,
            to_status=RoundStatus.AGGREGATING,
        ):
            return RoundDecision.WAIT, set()
        rnd.aggregating_at = now
        expired = round_crud.expire_open_tasks(session, round_id=rnd.id)
        accepted = round_crud.count_tasks(session, round_id=rnd.id, statuses=[TaskStatus.ACCEPTED])
        if accepted >= cfg.min_sites:
            emit(
                session,
                kind=EventKind.ROUND_AGGREGATING,
                experiment_id=experiment.id,
                detail={
                    "round": rnd.number,
                    "attempt": rnd.attempt,
                    "accepted": accepted,
                    "expired": expired,
                },
            )
            return RoundDecision.AGGREGATE, set()
        why = "the deadline passed" if expired else "every sampled site reported"
        sampled = round_crud.count_tasks(session, round_id=rnd.id)
        reason = f"{why} with {accepted} accepted update(s) of {sampled} sampled; min_sites is {cfg.min_sites}"
        return self._retry_or_fail(session, experiment, cfg, rnd, reason, now)

    def _retry_or_fail(
        self,
        session: Session,
        experiment: Experiment,
        cfg: ExperimentCreate,
        rnd: Round,
        reason: str,
        now: datetime,
    ) -> tuple[RoundDecision, set[str]]:
        rnd.status, rnd.reason, rnd.closed_at = RoundStatus.FAILED, reason, now
        round_crud.expire_open_tasks(session, round_id=rnd.id)
        if rnd.attempt < cfg.max_round_retries:
            emit(
                session,
                kind=EventKind.ROUND_RETRIED,
                experiment_id=experiment.id,
                detail={"round": rnd.number, "attempt": rnd.attempt, "reason": reason},
                logger=log,
                metrics=self._metrics,
                outcome=RoundOutcome.RETRIED,
            )
            return RoundDecision.RETRIED, open_round(
                session, self._blobs, experiment, cfg, rnd.number, rnd.attempt + 1, now
            )
        self._metrics.rounds.labels(outcome=RoundOutcome.FAILED.value).inc()
        fail_experiment(
            session,
            experiment,
            now,
            f"round {rnd.number} failed after {rnd.attempt + 1} attempt(s): {reason}",
        )
        return RoundDecision.FAILED, set()

    def _aggregate(self, experiment_id: str, round_id: str) -> set[str]:
        """Aggregate a claimed round: read its inputs, compute the model, close the round."""
        job = self._round_job(experiment_id, round_id)
        started = time.perf_counter()
        guards: list[GuardReport] = []
        try:
            result = self._compute(job, guards)
        except (AggregationError, StorageError) as exc:
            return self._aggregation_failed(experiment_id, round_id, exc)
        except Exception as exc:  # anything else also ends the round with a reason
            failure = AggregationError(f"aggregation failed: {type(exc).__name__}: {exc}"[:900])
            return self._aggregation_failed(experiment_id, round_id, failure)
        if result is None:  # secure aggregation: answers still pending
            return set()
        seconds = time.perf_counter() - started
        self._metrics.aggregation_seconds.observe(seconds)
        return self._close_round(job, result, seconds, guards)

    def _round_job(self, experiment_id: str, round_id: str) -> _RoundJob:
        """Everything the computation needs, read in one short session."""
        with self._db.session() as session:
            experiment = exp_crud.get_experiment(session, experiment_id=experiment_id)
            cfg = exp_crud.config_of(experiment)
            rnd = require_row(session.get(Round, round_id), f"round {round_id}")
            previous = round_crud.get_global_model(
                session, experiment_id=experiment_id, round_number=rnd.number - 1
            )
            accepted = round_crud.accepted_updates(session, round_id=round_id)
            # Keyed (and so ordered) by site name: the sum's order, hence its bits, does not
            # depend on the random site ids of one deployment.
            names = site_names(session, [t.site_id for t in accepted])
            samples = cap_samples(
                session,
                claimed={t.id: int(t.num_samples or 0) for t in accepted},
                site_ids={t.id: t.site_id for t in accepted},
            )
            return _RoundJob(
                experiment_id=experiment_id,
                round_id=round_id,
                cfg=cfg,
                inputs=[
                    UpdateInput(names[t.site_id], samples[t.id], t.update_blob_sha256 or "")
                    for t in accepted
                ],
                number=rnd.number,
                attempt=rnd.attempt,
                sampled=len(rnd.sampled),
                spec_hash=experiment.spec_hash,
                local_keys=frozenset(experiment.local_keys),
                global_sha=previous.sha256,
                state_sha=previous.state_sha256,
                clip=round_clip_norm(
                    session, experiment_id=experiment_id, cfg=cfg, round_number=rnd.number
                ),
                bits=[(t.metrics or {}).get("dp_unclipped") is True for t in accepted],
            )

    def _compute(self, job: _RoundJob, guards: list[GuardReport]) -> RoundResult | None:
        """The new global model (no database session held); None while secagg answers pend."""
        cfg = job.cfg
        if secure_aggregation_on(cfg):  # unmask the running sum
            return secagg_aggregate_round(
                self._db,
                self._blobs,
                round_id=job.round_id,
                global_sha256=job.global_sha,
                state_sha256=job.state_sha,
                now=self.clock(),
            )
        return aggregate_round(
            self._blobs,
            spec_hash=job.spec_hash,
            round_number=job.number,
            strategy_name=cfg.strategy.name,
            strategy_params=cfg.strategy.params,
            global_sha256=job.global_sha,
            state_sha256=job.state_sha,
            updates=job.inputs,
            local_keys=job.local_keys,
            noise=round_noise(cfg.privacy, sampled=job.sampled, clip_norm=job.clip),
            robust_norm_multiple=cfg.robust_norm_multiple,
            min_update_cosine=cfg.min_update_cosine,
            report=guards,
            class_names=cfg.class_names,
        )

    def _close_round(
        self, job: _RoundJob, result: RoundResult, seconds: float, guards: list[GuardReport]
    ) -> set[str]:
        """Store the global model, close the round (unless it was aborted meanwhile) and, in the
        same transaction, open the next one; returns the sites given a new task."""
        now = self.clock()
        experiment_id, number = job.experiment_id, job.number
        with self._db.session() as session:
            if not round_crud.claim_round(
                session,
                round_id=job.round_id,
                from_status=RoundStatus.AGGREGATING,
                to_status=RoundStatus.CLOSED,
            ):
                return set()  # aborted meanwhile
            rnd = require_row(
                session.get(Round, job.round_id, populate_existing=True), f"round {job.round_id}"
            )
            rnd.closed_at = now
            rnd.aggregate_seconds = seconds
            if session.get(GlobalModel, (experiment_id, number)) is None:
                session.add(
                    GlobalModel(
                        experiment_id=experiment_id,
                        round=number,
                        sha256=result.model.sha256,
                        size=result.model.size,
                        state_sha256=result.state.sha256 if result.state else None,
                        num_updates=len(job.inputs),
                    )
                )
            closing = require_row(
                session.get(Experiment, experiment_id, populate_existing=True),
                f"experiment {experiment_id}",
            )
            closing.current_round = max(closing.current_round, number)
            advance_clip(
                session,
                experiment_id=experiment_id,
                cfg=job.cfg,
                round_number=number,
                bits=job.bits,
                sampled=job.sampled,
            )
            emit(
                session,
                kind=EventKind.ROUND_CLOSED,
                experiment_id=experiment_id,
                detail={
                    "round": number,
                    "attempt": job.attempt,
                    "updates": len(job.inputs),
                    "model_sha256": result.model.sha256,
                    **guard_detail(guards),
                },
                logger=log,
                log_fields={
                    "round": number,
                    "attempt": job.attempt,
                    "updates": len(job.inputs),
                    "seconds": round(seconds, 4),
                    "model_sha256": result.model.sha256,
                },
                metrics=self._metrics,
                outcome=RoundOutcome.CLOSED,
            )
            if number >= job.cfg.rounds and closing.status == ExperimentStatus.RUNNING:
                complete_experiment(session, closing, now)
            opened = self._open_next(session, closing, job.cfg, now, job.round_id)
            session.commit()
        return opened

    def _open_next(
        self,
        session: Session,
        experiment: Experiment,
        cfg: ExperimentCreate,
        now: datetime,
        closed_id: str,
    ) -> set[str]:
        """Open the next round in the transaction that closes this one (one commit, not two).

        Only the plain case; the end of the experiment or of its privacy budget is left to the
        next ``_advance_once``, exactly as before.
        """
        if experiment.status != ExperimentStatus.RUNNING:
            return set()
        if experiment.current_round >= rounds_allowed(cfg, len(experiment.participants or [])):
            return set()
        if sample_budget_over(session, cfg, closed_id) is not None:
            return set()
        number = experiment.current_round + 1
        return open_round(session, self._blobs, experiment, cfg, number, 0, now)

    def _aggregation_failed(self, experiment_id: str, round_id: str, exc: Exception) -> set[str]:
        now = self.clock()
        with self._db.session() as session:
            experiment = exp_crud.get_experiment(session, experiment_id=experiment_id)
            rnd = require_row(session.get(Round, round_id), f"round {round_id}")
            if (
                rnd.status != RoundStatus.AGGREGATING
                or experiment.status != ExperimentStatus.RUNNING
            ):
                return set()
            if isinstance(exc, StorageError):
                rnd.status, rnd.reason, rnd.closed_at = RoundStatus.FAILED, str(exc), now
                fail_experiment(session, experiment, now, f"round {rnd.number}: {exc}")
                sites: set[str] = set()
            else:
                _, sites = self._retry_or_fail(
                    session, experiment, exp_crud.config_of(experiment), rnd, str(exc), now
                )
            session.commit()
        return sites


@dataclass(frozen=True)
class _RoundJob:
    """What aggregating one claimed round needs, read from the database before computing."""

    experiment_id: str
    round_id: str
    cfg: ExperimentCreate
    inputs: list[UpdateInput]
    number: int
    attempt: int
    sampled: int
    spec_hash: str
    local_keys: frozenset[str]
    global_sha: str
    state_sha: str | None
    clip: float | None = None
    bits: list[bool] = field(default_factory=list)
