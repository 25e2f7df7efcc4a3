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
from datetime import datetime

import anyio
from sqlalchemy.orm import Session

from aggregator.adaptive_clipping import advance_clip, round_clip_norm
from aggregator.aggregation import UpdateInput, aggregate_round
from aggregator.blobs import BlobStore
from aggregator.crud import experiments as exp_crud
from aggregator.crud import rounds as round_crud
from aggregator.crud.events import record_event
from aggregator.db import (
    Database,
    Experiment,
    ExperimentStatus,
    GlobalModel,
    Round,
    RoundStatus,
    TaskStatus,
)
from aggregator.db.models import OPEN_TASK_STATES, utcnow
from aggregator.dp_aggregation import round_noise
from aggregator.errors import AggregationError, StorageError
from aggregator.logs import log_event
from aggregator.privacy_budget import record_budget_spent, rounds_allowed
from aggregator.round_failures import StepFailures
from aggregator.safeguards import GuardReport, cap_samples, guard_detail
from aggregator.schemas.experiments import ExperimentCreate
from aggregator.secagg_aggregation import secagg_aggregate_round, secure_aggregation_on
from aggregator.task_board import TaskBoard
from aggregator.telemetry import AggregatorMetrics
from aggregator.transitions import complete_experiment, fail_experiment, open_round, site_names

log = logging.getLogger("aggregator.orchestrator")
_MAX_TRANSITIONS = 16
_SYSTEM = "system"


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
        self._failures = StepFailures(database, lambda: self.clock())

    # -- asyncio side -----------------------------------------------------------------------

    async def run(self, board: TaskBoard) -> None:
        """Step forever: every ``interval_s`` or as soon as ``wake`` is called."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval_s)
            self._wake.clear()
            try:
                touched = await anyio.to_thread.run_sync(self.step)
            except Exception:  # a bug must not stop the rounds of every other experiment
                log.exception("orchestrator.step_failed")
                continue
            board.notify(touched)

    def wake(self) -> None:
        """Ask for a step soon (callable from any thread)."""
        if self._loop is not None and self._wake is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    # -- synchronous side -------------------------------------------------------------------

    def step(self) -> set[str]:
        """Advance every running experiment as far as it can go now.

        Returns:
            Ids of sites that got a new task (their long polls are woken).
        """
        with self._lock:
            with self._db.session() as session:
                ids = exp_crud.running_experiment_ids(session)
            self._metrics.active_experiments.set(len(ids))
            touched: set[str] = set()
            for experiment_id in ids:
                try:
                    touched |= self._advance(experiment_id)
                except Exception as exc:  # bounded: see aggregator.round_failures
                    self._failures.failed(experiment_id, exc)
                else:
                    self._failures.succeeded(experiment_id)
            return touched

    def _advance(self, experiment_id: str) -> set[str]:
        touched: set[str] = set()
        for _ in range(_MAX_TRANSITIONS):
            changed, sites = self._advance_once(experiment_id)
            touched |= sites
            if not changed:
                break
        return touched

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
                if experiment.current_round >= limit:
                    if limit < cfg.rounds:  # the DP budget ran out first
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
                if decision != "aggregate":
                    return decision != "wait", sites
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
    ) -> tuple[str, set[str]]:
        """``wait``, ``aggregate`` (round claimed) or ``retried``/``failed``."""
        tasks = round_crud.tasks_of_round(session, round_id=rnd.id)
        pending = any(t.status in OPEN_TASK_STATES for t in tasks)
        if pending and now < rnd.deadline_at:
            return "wait", set()
        # Claim first: from here no upload can land, so the count below is final.
        if not round_crud.claim_round(
            session,
            round_id=rnd.id,
            from_status=RoundStatus.OPEN,
            to_status=RoundStatus.AGGREGATING,
        ):
            return "wait", set()
        rnd.aggregating_at = now
        expired = round_crud.expire_open_tasks(session, round_id=rnd.id)
        accepted = sum(
            t.status == TaskStatus.ACCEPTED
            for t in round_crud.tasks_of_round(session, round_id=rnd.id)
        )
        if accepted >= cfg.min_sites:
            record_event(
                session,
                kind="round.aggregating",
                actor=_SYSTEM,
                experiment_id=experiment.id,
                detail={
                    "round": rnd.number,
                    "attempt": rnd.attempt,
                    "accepted": accepted,
                    "expired": expired,
                },
            )
            return "aggregate", set()
        why = "the deadline passed" if expired else "every sampled site reported"
        reason = f"{why} with {accepted} accepted update(s) of {len(tasks)} sampled; min_sites is {cfg.min_sites}"
        return self._retry_or_fail(session, experiment, cfg, rnd, reason, now)

    def _retry_or_fail(
        self,
        session: Session,
        experiment: Experiment,
        cfg: ExperimentCreate,
        rnd: Round,
        reason: str,
        now: datetime,
    ) -> tuple[str, set[str]]:
        rnd.status, rnd.reason, rnd.closed_at = RoundStatus.FAILED, reason, now
        round_crud.expire_open_tasks(session, round_id=rnd.id)
        if rnd.attempt < cfg.max_round_retries:
            record_event(
                session,
                kind="round.retried",
                actor=_SYSTEM,
                experiment_id=experiment.id,
                detail={"round": rnd.number, "attempt": rnd.attempt, "reason": reason},
            )
            self._metrics.rounds.labels(outcome="retried").inc()
            log_event(
                log,
                "round.retried",
                experiment_id=experiment.id,
                round=rnd.number,
                attempt=rnd.attempt,
                reason=reason,
            )
            return "retried", open_round(
                session, self._blobs, experiment, cfg, rnd.number, rnd.attempt + 1, now
            )
        self._metrics.rounds.labels(outcome="failed").inc()
        fail_experiment(
            session,
            experiment,
            now,
            f"round {rnd.number} failed after {rnd.attempt + 1} attempt(s): {reason}",
        )
        return "failed", set()

    def _aggregate(self, experiment_id: str, round_id: str) -> set[str]:
        with self._db.session() as session:
            experiment = exp_crud.get_experiment(session, experiment_id=experiment_id)
            cfg = exp_crud.config_of(experiment)
            rnd = session.get(Round, round_id)
            assert rnd is not None
            previous = round_crud.get_global_model(
                session, experiment_id=experiment_id, round_number=rnd.number - 1
            )
            accepted = [
                t
                for t in round_crud.tasks_of_round(session, round_id=round_id)
                if t.status == TaskStatus.ACCEPTED
            ]
            # Keyed (and so ordered) by site name: the sum's order, hence its bits, does not
            # depend on the random site ids of one deployment.
            names = site_names(session, [t.site_id for t in accepted])
            samples = cap_samples(
                session,
                claimed={t.id: int(t.num_samples or 0) for t in accepted},
                site_ids={t.id: t.site_id for t in accepted},
            )
            inputs = [
                UpdateInput(names[t.site_id], samples[t.id], t.update_blob_sha256 or "")
                for t in accepted
            ]
            number, attempt, sampled = rnd.number, rnd.attempt, len(rnd.sampled)
            spec_hash, local_keys = experiment.spec_hash, frozenset(experiment.local_keys)
            clip = round_clip_norm(
                session, experiment_id=experiment_id, cfg=cfg, round_number=number
            )
            bits = [(t.metrics or {}).get("dp_unclipped") is True for t in accepted]
            global_sha, state_sha = previous.sha256, previous.state_sha256
        started = time.perf_counter()
        guards: list[GuardReport] = []
        try:
            if secure_aggregation_on(cfg):  # unmask the running sum (None: answers pending)
                pending = secagg_aggregate_round(
                    self._db,
                    self._blobs,
                    round_id=round_id,
                    global_sha256=global_sha,
                    state_sha256=state_sha,
                    now=self.clock(),
                )
                if pending is None:
                    return set()
                result = pending
            else:
                result = aggregate_round(
                    self._blobs,
                    spec_hash=spec_hash,
                    round_number=number,
                    strategy_name=cfg.strategy.name,
                    strategy_params=cfg.strategy.params,
                    global_sha256=global_sha,
                    state_sha256=state_sha,
                    updates=inputs,
                    local_keys=local_keys,
                    noise=round_noise(cfg.privacy, sampled=sampled, clip_norm=clip),
                    robust_norm_multiple=cfg.robust_norm_multiple,
                    report=guards,
                    class_names=cfg.class_names,
                )
        except (AggregationError, StorageError) as exc:
            return self._aggregation_failed(experiment_id, round_id, exc)
        except Exception as exc:  # anything else also ends the round with a reason
            failure = AggregationError(f"aggregation failed: {type(exc).__name__}: {exc}"[:900])
            return self._aggregation_failed(experiment_id, round_id, failure)
        seconds = time.perf_counter() - started
        self._metrics.aggregation_seconds.observe(seconds)
        now = self.clock()
        with self._db.session() as session:
            if not round_crud.claim_round(
                session,
                round_id=round_id,
                from_status=RoundStatus.AGGREGATING,
                to_status=RoundStatus.CLOSED,
            ):
                return set()  # aborted meanwhile
            rnd = session.get(Round, round_id, populate_existing=True)
            assert rnd is not None
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
                        num_updates=len(inputs),
                    )
                )
            closing = session.get(Experiment, experiment_id, populate_existing=True)
            assert closing is not None
            closing.current_round = max(closing.current_round, number)
            advance_clip(
                session,
                experiment_id=experiment_id,
                cfg=cfg,
                round_number=number,
                bits=bits,
                sampled=sampled,
            )
            record_event(
                session,
                kind="round.closed",
                actor=_SYSTEM,
                experiment_id=experiment_id,
                detail={
                    "round": number,
                    "attempt": attempt,
                    "updates": len(inputs),
                    "model_sha256": result.model.sha256,
                    **guard_detail(guards),
                },
            )
            if number >= cfg.rounds and closing.status == ExperimentStatus.RUNNING:
                complete_experiment(session, closing, now)
            opened = self._open_next(session, closing, cfg, now)
            session.commit()
        self._metrics.rounds.labels(outcome="closed").inc()
        log_event(
            log,
            "round.closed",
            experiment_id=experiment_id,
            round=number,
            attempt=attempt,
            updates=len(inputs),
            seconds=round(seconds, 4),
            model_sha256=result.model.sha256,
        )
        return opened

    def _open_next(
        self, session: Session, experiment: Experiment, cfg: ExperimentCreate, now: datetime
    ) -> set[str]:
        """Open the next round in the transaction that closes this one (one commit, not two).

        Only the plain case; the end of the experiment or of its privacy budget is left to the
        next ``_advance_once``, exactly as before.
        """
        if experiment.status != ExperimentStatus.RUNNING:
            return set()
        if experiment.current_round >= rounds_allowed(cfg, len(experiment.participants or [])):
            return set()
        number = experiment.current_round + 1
        return open_round(session, self._blobs, experiment, cfg, number, 0, now)

    def _aggregation_failed(self, experiment_id: str, round_id: str, exc: Exception) -> set[str]:
        now = self.clock()
        with self._db.session() as session:
            experiment = exp_crud.get_experiment(session, experiment_id=experiment_id)
            rnd = session.get(Round, round_id)
            assert rnd is not None
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
