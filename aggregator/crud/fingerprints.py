"""Site fingerprints and experiment plans: store, replace, read."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.storage.db.fingerprints import ExperimentPlanRow, SiteFingerprint
from aggregator.storage.db.id_lists import in_ids
from aggregator.storage.db.models import utcnow
from data_specs.manifests.fingerprint import DatasetFingerprint
from data_specs.plan import ExperimentPlan


def fingerprint_sha256(fingerprint: DatasetFingerprint) -> str:
    """sha256 (hex) of a fingerprint's canonical JSON."""
    data = json.dumps(fingerprint.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()


def put_site_fingerprint(
    session: Session, *, site_id: str, fingerprint: DatasetFingerprint
) -> tuple[SiteFingerprint, bool]:
    """Store a site's fingerprint, replacing the previous one.

    Returns:
        The row and whether the fingerprint changed.
    """
    sha = fingerprint_sha256(fingerprint)
    row = session.get(SiteFingerprint, site_id)
    if row is not None and row.sha256 == sha:
        return row, False
    if row is None:
        row = SiteFingerprint(site_id=site_id)
        session.add(row)
    row.fingerprint = fingerprint.model_dump(mode="json")
    row.sha256 = sha
    row.updated_at = utcnow()
    session.flush()
    return row, True


def get_site_fingerprint(session: Session, *, site_id: str) -> DatasetFingerprint | None:
    """A site's latest fingerprint, or None if it sent none."""
    row = session.get(SiteFingerprint, site_id)
    return None if row is None else DatasetFingerprint.model_validate(row.fingerprint)


def fingerprints_of(session: Session, *, site_ids: Iterable[str]) -> dict[str, DatasetFingerprint]:
    """The fingerprints the given sites sent (sites without one are absent)."""
    ids = list(site_ids)
    rows = session.scalars(
        select(SiteFingerprint).where(in_ids(session, SiteFingerprint.site_id, ids))
    )
    return {r.site_id: DatasetFingerprint.model_validate(r.fingerprint) for r in rows}


def store_plan(session: Session, *, experiment_id: str, plan: ExperimentPlan) -> None:
    """Keep the plan an experiment starts with (one per experiment)."""
    session.merge(ExperimentPlanRow(experiment_id=experiment_id, plan=plan.model_dump(mode="json")))
    session.flush()


def get_plan(session: Session, *, experiment_id: str) -> ExperimentPlan | None:
    """The experiment's stored plan, or None when it has none (yet)."""
    row = session.get(ExperimentPlanRow, experiment_id)
    return None if row is None else ExperimentPlan.model_validate(row.plan)
