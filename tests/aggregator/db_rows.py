"""Rows straight into an aggregator database: a researcher, N sites and one experiment.

For tests and benchmarks of the storage layer that need a federation's rows but no API.
"""

from __future__ import annotations

from aggregator.storage.db import Database, Experiment, Researcher, Site

RESEARCHER_ID = "r" * 32
EXPERIMENT_ID = "e" * 32


def seed_federation(db: Database, sites: int) -> list[str]:
    """Insert a researcher, ``sites`` registered sites and an experiment; the sites' ids."""
    ids = [f"{i:032x}" for i in range(sites)]
    with db.session() as session:
        session.add(Researcher(id=RESEARCHER_ID, name="alice", token_hash="a" * 64))
        session.flush()  # no relationship orders the owner before its rows
        session.add_all(
            Site(id=site_id, name=f"hospital-{i}", registered_by=RESEARCHER_ID)
            for i, site_id in enumerate(ids)
        )
        session.add(
            Experiment(
                id=EXPERIMENT_ID,
                name="scale",
                owner_id=RESEARCHER_ID,
                config={},
                spec_hash="0" * 64,
                expected={},
                local_keys=[],
            )
        )
        session.commit()
    return ids
