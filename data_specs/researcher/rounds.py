"""Schemas of rounds and of a site's part in one (what researchers see in ``GET .../rounds``)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from data_specs.wire import SiteMetrics


class SiteRoundPublic(BaseModel):
    """One sampled site in one round attempt."""

    site_id: str
    site_name: str
    task_id: str
    status: str
    num_samples: int | None
    metrics: SiteMetrics | None
    bytes_up: int
    bytes_down: int
    update_sha256: str | None
    reject_reason: str | None
    failure_reason: str | None
    reported_at: datetime | None
    delivered_at: datetime | None = None


class RoundTimelinePublic(BaseModel):
    """The aggregator's side of a round (UTC instants, seconds).

    ``close_latency_s`` is the time from the last site report to the round's claim for
    aggregation (event-driven rounds: milliseconds; a deadline close: until the deadline).
    """

    last_report_at: datetime | None
    aggregating_at: datetime | None
    aggregate_s: float | None
    close_latency_s: float | None


class RoundPrivacy(BaseModel):
    """Client-level DP of a closed round: ε of this round alone and of rounds 1..number."""

    epsilon_round: float
    epsilon_total: float
    delta: float
    noise_multiplier: float
    clip_norm: float
    epsilon_budget: float | None


class RoundSamplePrivacy(BaseModel):
    """Sample-level DP-SGD of a closed round, from the sites' own accountants (``train.dp_sgd``).

    Each site's (ε, δ) protects the cases of that site; the round shows the largest over the
    sites that reported one (``sites``): ε of this round's local training alone and of rounds
    1..number together (an upper bound, see ``SampleDPSpent``).
    """

    epsilon_round: float
    epsilon_total: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    sites: int
    epsilon_budget: float | None = None


class RoundPublic(BaseModel):
    """One attempt at a round; ``model_sha256`` is the global model it produced (when closed)."""

    number: int
    attempt: int
    status: str
    sampled: list[str]
    opened_at: datetime
    deadline: datetime
    closed_at: datetime | None
    reason: str | None
    model_sha256: str | None
    sites: list[SiteRoundPublic]
    privacy: RoundPrivacy | None = None
    sample_privacy: RoundSamplePrivacy | None = None
    timeline: RoundTimelinePublic | None = None


class TaskStatusPublic(BaseModel):
    """A task's status after a site reported on it."""

    task_id: str
    status: str
