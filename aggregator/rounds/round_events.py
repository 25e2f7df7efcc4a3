"""Round decisions and outcomes as enums, and ``emit``: one call for event, log line and metric.

The orchestrator used bare strings for what a round step decided (``"wait"``, ``"aggregate"``,
...) and wrote the audit event, the structured log line and the Prometheus counter of one
happening in three places; here each is written once.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from aggregator.crud.events import record_event
from aggregator.logs import log_event
from aggregator.telemetry import AggregatorMetrics
from data_specs.event_kinds import EventKind

SYSTEM_ACTOR = "system"


class RoundDecision(StrEnum):
    """What one look at an open round decided."""

    WAIT = "wait"  # sites still working and the deadline not reached
    AGGREGATE = "aggregate"  # round claimed for aggregation
    RETRIED = "retried"  # too few updates: the round re-opens with fresh sites
    FAILED = "failed"  # too few updates and no retries left: the experiment failed


class RoundOutcome(StrEnum):
    """How a round attempt ended (the ``outcome`` label of ``fedseg_rounds``)."""

    CLOSED = "closed"
    RETRIED = "retried"
    FAILED = "failed"


def emit(
    session: Session,
    *,
    kind: EventKind,
    experiment_id: str,
    detail: dict[str, Any],
    logger: logging.Logger | None = None,
    log_fields: dict[str, Any] | None = None,
    metrics: AggregatorMetrics | None = None,
    outcome: RoundOutcome | None = None,
) -> None:
    """Record one round happening: the audit event, and when asked its log line and counter.

    Args:
        session: the open session; the event commits with the change it describes.
        kind: the event kind. Example: ``EventKind.ROUND_CLOSED``.
        experiment_id: the experiment.
        detail: the event's small JSON facts (ids, counts, reasons; never file contents).
        logger: where the structured log line goes; None writes none. Default None.
        log_fields: the log line's fields. Default ``detail``.
        metrics: the aggregator's metrics; with ``outcome``, ``fedseg_rounds`` counts it.
        outcome: the round outcome to count. Default None (no count).
    """
    record_event(session, kind=kind, actor=SYSTEM_ACTOR, experiment_id=experiment_id, detail=detail)
    if metrics is not None and outcome is not None:
        metrics.rounds.labels(outcome=outcome.value).inc()
    if logger is not None:
        fields = detail if log_fields is None else log_fields
        log_event(logger, kind.value, experiment_id=experiment_id, **fields)
