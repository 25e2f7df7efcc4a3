"""Adaptive clipping in the service (Andrew et al. 2021): each round's ``C`` and the step after it.

A DP experiment with ``privacy.dp.adaptive`` starts at ``dp.clip_norm``. Each site clips its
update to the round's ``C`` and reports one bit with it (``SiteMetrics.dp_unclipped``: the norm
was at most ``C``). When the round is aggregated, the aggregator adds ``N(0, σ_b²)`` to the count
of set bits, divides by the sampled sites and stores the next round's
``C ← C·exp(−η (b̄ − γ))`` (table ``dp_round_clips``). The round's update noise uses the raised
multiplier ``z_Δ`` of :func:`data_specs.privacy.dp.split_noise`, so the accountant keeps
composing the configured ``z`` (``aggregator.privacy.privacy_budget``). A missing bit counts as clipped.

The bit noise comes from the operating system's randomness, as the update noise does
(``aggregator.privacy.dp_aggregation``). Central mode only (``PrivacyConfig`` refuses the others).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.storage.db.dp_models import DpRoundClip
from data_specs.privacy import DPConfig
from data_specs.privacy.dp import AdaptiveClip, split_noise
from data_specs.researcher.experiments import ExperimentCreate
from data_specs.researcher.privacy_rules import NORM_SLACK


def _dp(cfg: ExperimentCreate) -> DPConfig | None:
    return cfg.privacy.dp if cfg.privacy is not None else None


def adaptive_rule(dp: DPConfig) -> AdaptiveClip | None:
    """The quantile tracker of an adaptive experiment (with its bit noise), else None."""
    if dp.adaptive is None:
        return None
    _, sigma_b = split_noise(dp.noise_multiplier, dp.adaptive.bit_share)
    return AdaptiveClip(dp.adaptive.target_quantile, dp.adaptive.learning_rate, sigma_b)


def update_noise_multiplier(dp: DPConfig) -> float:
    """The noise multiplier on the update sum: ``z``, or ``z_Δ > z`` with adaptive clipping."""
    if dp.adaptive is None:
        return dp.noise_multiplier
    return split_noise(dp.noise_multiplier, dp.adaptive.bit_share)[0]


def round_clip_norm(
    session: Session, *, experiment_id: str, cfg: ExperimentCreate, round_number: int
) -> float | None:
    """``C`` of a round: None without DP; ``dp.clip_norm`` when fixed or not yet adapted."""
    dp = _dp(cfg)
    if dp is None:
        return None
    if dp.adaptive is None:
        return dp.clip_norm
    row = session.get(DpRoundClip, (experiment_id, round_number))
    return dp.clip_norm if row is None else row.clip_norm


def round_norm_bound(
    session: Session, *, experiment_id: str, cfg: ExperimentCreate, round_number: int
) -> float | None:
    """The intake's bound on ``‖W − θ‖``: the round's ``C`` (plus slack) when it adapts."""
    dp = _dp(cfg)
    if dp is None or dp.adaptive is None:
        return cfg.update_norm_bound
    clip = round_clip_norm(session, experiment_id=experiment_id, cfg=cfg, round_number=round_number)
    assert clip is not None
    return clip * (1 + NORM_SLACK)


def clip_norms(session: Session, *, experiment_id: str) -> dict[int, float]:
    """Every adapted round's ``C`` by round number (empty for a fixed ``C``)."""
    rows = session.scalars(select(DpRoundClip).where(DpRoundClip.experiment_id == experiment_id))
    return {r.round_number: r.clip_norm for r in rows}


def advance_clip(
    session: Session,
    *,
    experiment_id: str,
    cfg: ExperimentCreate,
    round_number: int,
    bits: Sequence[bool | None],
    sampled: int,
    rng: np.random.Generator | None = None,
) -> float | None:
    """Store the next round's ``C`` from this round's bits; returns it (None: ``C`` is fixed).

    Idempotent: a round aggregated again (after a crash) keeps the ``C`` stored the first time.
    """
    dp = _dp(cfg)
    rule = None if dp is None else adaptive_rule(dp)
    if rule is None:
        return None
    stored = session.get(DpRoundClip, (experiment_id, round_number + 1))
    if stored is not None:
        return stored.clip_norm
    current = round_clip_norm(
        session, experiment_id=experiment_id, cfg=cfg, round_number=round_number
    )
    assert current is not None
    share = rule.noisy_share(
        sum(1 for b in bits if b), max(sampled, 1), rng or np.random.default_rng()
    )
    row = session.get(DpRoundClip, (experiment_id, round_number))
    if row is None:
        row = DpRoundClip(experiment_id=experiment_id, round_number=round_number, clip_norm=current)
        session.add(row)
    row.unclipped_share = share
    following = rule.step(current, share)
    session.add(
        DpRoundClip(
            experiment_id=experiment_id,
            round_number=round_number + 1,
            clip_norm=following,
            unclipped_share=None,
        )
    )
    return following
