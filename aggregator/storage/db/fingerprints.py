"""Tables of the federated plan: each site's latest dataset fingerprint, each experiment's plan."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from aggregator.storage.db.models import SHA_LEN, Base, utcnow


class SiteFingerprint(Base):
    """The latest ``DatasetFingerprint`` a site sent (aggregates only; replaced on each PUT)."""

    __tablename__ = "site_fingerprints"

    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), primary_key=True)
    fingerprint: Mapped[dict[str, Any]]
    sha256: Mapped[str] = mapped_column(String(SHA_LEN))  # of the canonical JSON
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ExperimentPlanRow(Base):
    """The ``ExperimentPlan`` an experiment with ``plan: auto`` was started with."""

    __tablename__ = "experiment_plans"

    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id"), primary_key=True)
    plan: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
