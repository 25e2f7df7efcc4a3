"""The audit events' kinds, defined once: what the aggregator records and a researcher reads.

Values are the dotted strings stored in the events table and served by ``GET /events``; a
``StrEnum`` member compares and serialises as its string, so stored events keep their meaning.
"""

from __future__ import annotations

from enum import StrEnum


class EventKind(StrEnum):
    """Kinds of audit events (``Event.kind``)."""

    EXPERIMENT_CREATED = "experiment.created"
    EXPERIMENT_PLANNED = "experiment.planned"
    EXPERIMENT_STARTED = "experiment.started"
    EXPERIMENT_PAUSED = "experiment.paused"
    EXPERIMENT_RESUMED = "experiment.resumed"
    EXPERIMENT_INITIAL_MODEL = "experiment.initial_model"
    EXPERIMENT_COMPLETED = "experiment.completed"
    EXPERIMENT_FAILED = "experiment.failed"
    EXPERIMENT_ABORTED = "experiment.aborted"
    ROUND_OPENED = "round.opened"
    ROUND_AGGREGATING = "round.aggregating"
    ROUND_CLOSED = "round.closed"
    ROUND_RETRIED = "round.retried"
    UPDATE_ACCEPTED = "update.accepted"
    UPDATE_REJECTED = "update.rejected"
    TASK_FAILED = "task.failed"
    PERSONAL_SHARED = "personal.shared"
    PRIVACY_BUDGET_SPENT = "privacy.budget_spent"
    GRANT_CREATED = "grant.created"
    SITE_REGISTERED = "site.registered"
    SITE_ENROLLED = "site.enrolled"
    SITE_ROTATED = "site.rotated"
    SITE_REVOKED = "site.revoked"
    SITE_FINGERPRINT = "site.fingerprint"
    SITE_CONSENT_POLICY = "site.consent_policy"
    SITE_APPROVED = "site.approved"
    SITE_DECLINED = "site.declined"
    RESEARCHER_CREATED = "researcher.created"
    RESEARCHER_ROTATED = "researcher.rotated"
    RESEARCHER_REVOKED = "researcher.revoked"
