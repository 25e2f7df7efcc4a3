"""Table of adaptive clipping (client-level DP): the clip norm of each round of an experiment.

One row per round number: the ``C`` that round's tasks clip to (and its intake enforces), and,
once the round is aggregated, the noisy share of unclipped updates that set the next round's
``C``. Nothing here is per site.
"""

from __future__ import annotations

from sqlalchemy import ForeignKey
from sqlalchemy.orm import Mapped, mapped_column

from aggregator.storage.db.models import Base


class DpRoundClip(Base):
    """``C`` of one round of an adaptive-clipping experiment."""

    __tablename__ = "dp_round_clips"

    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id"), primary_key=True)
    round_number: Mapped[int] = mapped_column(primary_key=True)
    clip_norm: Mapped[float]
    unclipped_share: Mapped[float | None]  # noisy b̄ of this round, once aggregated
