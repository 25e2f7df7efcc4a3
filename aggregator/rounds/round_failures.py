"""What the round loop does when advancing an experiment keeps raising: fail it, with the reason.

The orchestrator steps every experiment about once a second. An unexpected error (a bug, a
database fault) used to be logged with a traceback on every step, for ever, while the round sat
in ``aggregating``. ``StepFailures`` counts consecutive failures per experiment: the first is
logged with its traceback, and after ``limit`` of them the experiment is marked failed with the
error as its reason, so it stops being stepped (and logged) and its owner sees why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from aggregator.crud import rounds as round_crud
from aggregator.rounds.transitions import fail_experiment
from aggregator.storage.db import Database, Experiment, ExperimentStatus, Round, RoundStatus

log = logging.getLogger("aggregator.rounds.orchestrator")
DEFAULT_LIMIT = 3


class StepFailures:
    """Consecutive step failures per experiment, and the decision to give up.

    Args:
        database: where the experiment is marked failed.
        clock: current time.
        limit: failures in a row before the experiment is failed. Default 3.
    """

    def __init__(
        self, database: Database, clock: Callable[[], datetime], limit: int = DEFAULT_LIMIT
    ) -> None:
        self._db = database
        self._clock = clock
        self.limit = limit
        self._counts: dict[str, int] = {}

    def succeeded(self, experiment_id: str) -> None:
        """Forget an experiment's failures after a clean step."""
        self._counts.pop(experiment_id, None)

    def failed(self, experiment_id: str, exc: Exception) -> None:
        """Count one failure; log the first with a traceback; fail the experiment at ``limit``."""
        count = self._counts.get(experiment_id, 0) + 1
        self._counts[experiment_id] = count
        fields = {"experiment_id": experiment_id, "failures": count}
        if count == 1:
            log.exception("orchestrator.experiment_failed", extra={"fields": fields})
        if count < self.limit:
            return
        reason = f"the round loop failed {count} times in a row: {type(exc).__name__}: {exc}"
        try:
            self._fail(experiment_id, reason[:1000])
        except Exception:  # the database itself is failing: try again on a later step
            if count == self.limit:
                log.exception("orchestrator.cannot_fail_experiment", extra={"fields": fields})
            return
        self._counts.pop(experiment_id, None)

    def _fail(self, experiment_id: str, reason: str) -> None:
        now = self._clock()
        with self._db.session() as session:
            experiment = session.get(Experiment, experiment_id)
            if experiment is None or experiment.status != ExperimentStatus.RUNNING:
                return
            rnd = round_crud.latest_round(session, experiment_id=experiment_id)
            if isinstance(rnd, Round) and rnd.status in (RoundStatus.OPEN, RoundStatus.AGGREGATING):
                rnd.status, rnd.reason, rnd.closed_at = RoundStatus.FAILED, reason, now
                round_crud.expire_open_tasks(session, round_id=rnd.id)
            fail_experiment(session, experiment, now, reason)
            session.commit()
