"""The privacy budget of a DP experiment: rounds it may run and the (ε, δ) spent after each round.

ε depends only on the configuration (noise multiplier, sampling rate, δ) and the number of
rounds aggregated, so nothing is stored: the rounds API and the orchestrator recompute it
(cached) from the experiment's config and its participants.

Sample-level DP-SGD (``train.dp_sgd``) depends on each site's data size, which only the site
knows: its accountant reports ε with each update (``SiteMetrics.dp_sgd``), including the total
after one more round (``epsilon_next``); the orchestrator ends the experiment once a report of
the last closed round says that one more round would exceed ``train.dp_sgd.epsilon_budget``.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.crud.events import record_event
from aggregator.rounds.sampling import sample_size
from aggregator.storage.db import Experiment, RoundStatus, Task
from data_specs.event_kinds import EventKind
from data_specs.privacy.accountant import PrivacySpent, rounds_within, spent
from data_specs.privacy.sample_dp import SampleDPSpent
from data_specs.researcher.experiments import ExperimentCreate
from data_specs.researcher.rounds import RoundPrivacy, RoundPublic, RoundSamplePrivacy


def sample_rate(cfg: ExperimentCreate, participants: int) -> float:
    """``q = m / K``: the share of participating sites sampled per round."""
    if participants < 1:
        return 1.0
    return sample_size(participants, cfg.fraction, cfg.min_sites) / participants


def rounds_allowed(cfg: ExperimentCreate, participants: int) -> int:
    """``cfg.rounds``, or fewer when the ε budget runs out first (0: not even one round fits)."""
    dp = cfg.privacy.dp if cfg.privacy else None
    if dp is None or dp.epsilon_budget is None:
        return cfg.rounds
    q = sample_rate(cfg, participants)
    return rounds_within(dp.noise_multiplier, q, dp.delta, dp.epsilon_budget, cfg.rounds)


def privacy_after(cfg: ExperimentCreate, participants: int, rounds: int) -> PrivacySpent | None:
    """(ε, δ) of one round and of ``rounds`` rounds together, or None without DP."""
    dp = cfg.privacy.dp if cfg.privacy else None
    if dp is None:
        return None
    return spent(dp.noise_multiplier, sample_rate(cfg, participants), rounds, dp.delta)


def record_budget_spent(session: Session, experiment: Experiment, cfg: ExperimentCreate) -> None:
    """Audit event: the experiment stops early because one more round would exceed the budget."""
    participants = len(experiment.participants or [])
    now = privacy_after(cfg, participants, experiment.current_round)
    dp = cfg.privacy.dp if cfg.privacy else None
    record_event(
        session,
        kind=EventKind.PRIVACY_BUDGET_SPENT,
        actor="system",
        experiment_id=experiment.id,
        detail={
            "rounds": experiment.current_round,
            "rounds_configured": cfg.rounds,
            "epsilon": None if now is None else round(now.epsilon_total, 4),
            "delta": None if now is None else now.delta,
            "epsilon_budget": None if dp is None else dp.epsilon_budget,
        },
    )


def sample_budget_over(
    session: Session, cfg: ExperimentCreate, round_id: str
) -> SampleDPSpent | None:
    """The round's site report whose ``epsilon_next`` exceeds the DP-SGD budget (the largest).

    None without ``train.dp_sgd.epsilon_budget``, or when every reporting site can afford one
    more round.
    """
    dp = cfg.train.dp_sgd
    if dp is None or dp.epsilon_budget is None:
        return None
    reports = []
    for metrics in session.scalars(select(Task.metrics).where(Task.round_id == round_id)):
        raw = (metrics or {}).get("dp_sgd")
        if raw and raw.get("epsilon_next") is not None:
            reports.append(SampleDPSpent.model_validate(raw))
    worst = max(reports, key=lambda s: s.epsilon_next or 0.0, default=None)
    if worst is None or (worst.epsilon_next or 0.0) <= dp.epsilon_budget:
        return None
    return worst


def record_sample_budget_spent(
    session: Session, experiment: Experiment, cfg: ExperimentCreate, worst: SampleDPSpent
) -> None:
    """Audit event: the experiment stops because a site's next DP-SGD round would exceed the budget."""
    record_event(
        session,
        kind=EventKind.PRIVACY_BUDGET_SPENT,
        actor="system",
        experiment_id=experiment.id,
        detail={
            "level": "sample",
            "rounds": experiment.current_round,
            "rounds_configured": cfg.rounds,
            "epsilon": round(worst.epsilon_total, 4),
            "epsilon_next": round(worst.epsilon_next or 0.0, 4),
            "delta": worst.delta,
            "epsilon_budget": cfg.train.dp_sgd.epsilon_budget if cfg.train.dp_sgd else None,
        },
    )


def with_privacy(
    rounds: list[RoundPublic],
    cfg: ExperimentCreate,
    participants: list[str] | None,
    clip_norms: dict[int, float] | None = None,
) -> list[RoundPublic]:
    """The rounds with ``privacy`` filled in for each closed round of a DP experiment.

    ``clip_norms``: each round's ``C`` under adaptive clipping (absent rounds: ``dp.clip_norm``).
    """
    if cfg.train.dp_sgd is not None:
        budget = cfg.train.dp_sgd.epsilon_budget
        rounds = [_with_sample_privacy(r, budget) for r in rounds]
    dp = cfg.privacy.dp if cfg.privacy else None
    if dp is None:
        return rounds
    out = []
    for r in rounds:
        after = privacy_after(cfg, len(participants or []), r.number)
        if r.status != RoundStatus.CLOSED or after is None:
            out.append(r)
            continue
        privacy = RoundPrivacy(
            epsilon_round=after.epsilon_round,
            epsilon_total=after.epsilon_total,
            delta=after.delta,
            noise_multiplier=dp.noise_multiplier,
            clip_norm=(clip_norms or {}).get(r.number, dp.clip_norm),
            epsilon_budget=dp.epsilon_budget,
        )
        out.append(r.model_copy(update={"privacy": privacy}))
    return out


def _with_sample_privacy(r: RoundPublic, budget: float | None = None) -> RoundPublic:
    """``sample_privacy`` of a closed round: the largest ε the sites' accountants reported."""
    spent = [s.metrics.dp_sgd for s in r.sites if s.metrics is not None and s.metrics.dp_sgd]
    if r.status != RoundStatus.CLOSED or not spent:
        return r
    worst = max(spent, key=lambda s: s.epsilon_total)
    privacy = RoundSamplePrivacy(
        epsilon_round=max(s.epsilon_round for s in spent),
        epsilon_total=worst.epsilon_total,
        delta=worst.delta,
        noise_multiplier=worst.noise_multiplier,
        max_grad_norm=worst.max_grad_norm,
        sites=len(spent),
        epsilon_budget=budget,
    )
    return r.model_copy(update={"sample_privacy": privacy})
