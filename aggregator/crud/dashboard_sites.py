"""The dashboard's Sites page: every site with its standing consent and its approvals.

Consent is issue 15's (``aggregator.consent``): a site's standing ``accept_experiments`` policy
(``Site.accept_policy``) plus explicit decisions on invitations (``Consent`` rows), an explicit
decision overriding the policy. This view shows a researcher only what concerns them:

- of the policy, the entries that cover their experiments (``*``, ``researcher:<their name>``,
  the id of one of their experiments); other entries are only counted;
- approvals of their own experiments that are not finished (created, running, paused): the
  site's decision on each, how it was reached and, once started, whether the site takes part.

Four queries whatever the number of sites and experiments (no query per site).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.consent import policy_allows
from aggregator.crud import experiments as exp_crud
from aggregator.storage.db.models import Consent, Experiment, ExperimentStatus, Site

OPEN_STATUSES = (ExperimentStatus.CREATED, ExperimentStatus.RUNNING, ExperimentStatus.PAUSED)


def visible_policy(
    policy: list[str] | None, *, researcher_name: str, experiment_ids: set[str]
) -> dict[str, Any]:
    """The part of a standing policy the researcher may see.

    Returns:
        ``{"entries": [...], "hidden": n}``: entries that cover the researcher's experiments
        (``*``, ``researcher:<name>``, one of ``experiment_ids``), and how many others there are.
    """
    mine = {"*", f"researcher:{researcher_name}"} | experiment_ids
    entries = [e for e in policy or () if e in mine]
    return {"entries": entries, "hidden": len(policy or ()) - len(entries)}


def site_approvals(
    session: Session, *, researcher_id: str, researcher_name: str
) -> list[dict[str, Any]]:
    """Every site, by name, with its status, last contact, visible policy and approvals.

    Each site: ``id``, ``name``, ``status``, ``created_at``, ``enrolled_at``, ``last_seen_at``,
    ``policy`` (see :func:`visible_policy`) and ``approvals``: one entry per open experiment of
    the researcher that invites the site, ``{"experiment_id", "experiment_name",
    "experiment_status", "decision", "by", "participant"}`` where ``decision`` is ``approved``,
    ``declined`` or ``pending``; ``by`` is ``site`` (an explicit decision), ``policy`` (the
    standing policy) or None (pending); ``participant`` is None before the start, else whether
    the site was among the participants fixed at start.
    """
    sites = list(session.scalars(select(Site).order_by(Site.name)))
    experiments = list(
        session.scalars(
            select(Experiment)
            .where(Experiment.owner_id == researcher_id, Experiment.status.in_(OPEN_STATUSES))
            .order_by(Experiment.created_at)
        )
    )
    decisions: dict[tuple[str, str], str] = {}
    if experiments:
        rows = session.execute(
            select(Consent.experiment_id, Consent.site_id, Consent.decision).where(
                Consent.experiment_id.in_([e.id for e in experiments])
            )
        )
        decisions = {(exp_id, site_id): decision for exp_id, site_id, decision in rows}
    invited = {e.id: exp_crud.config_of(e).sites for e in experiments}
    ids = set(session.scalars(select(Experiment.id).where(Experiment.owner_id == researcher_id)))
    out = []
    for site in sites:
        approvals = []
        for e in experiments:
            only = invited[e.id]
            if only is not None and site.id not in only:
                continue
            decision = decisions.get((e.id, site.id))
            by: str | None = "site"
            if decision is None:
                allowed = policy_allows(
                    site.accept_policy, experiment_id=e.id, owner_name=researcher_name
                )
                decision, by = ("approved", "policy") if allowed else ("pending", None)
            started = e.status != ExperimentStatus.CREATED
            approvals.append(
                {
                    "experiment_id": e.id,
                    "experiment_name": e.name,
                    "experiment_status": e.status,
                    "decision": decision,
                    "by": by,
                    "participant": (site.id in (e.participants or [])) if started else None,
                }
            )
        out.append(
            {
                "id": site.id,
                "name": site.name,
                "status": site.status,
                "created_at": site.created_at,
                "enrolled_at": site.enrolled_at,
                "last_seen_at": site.last_seen_at,
                "policy": visible_policy(
                    site.accept_policy, researcher_name=researcher_name, experiment_ids=ids
                ),
                "approvals": approvals,
            }
        )
    return out
