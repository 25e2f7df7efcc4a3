"""``/dashboard``: small read-only views the web dashboard needs (summaries, curves, round details)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from aggregator.api.deps import CurrentResearcher, SessionDep
from aggregator.crud import dashboard, dashboard_sites
from aggregator.crud import experiments as exp_crud

router = APIRouter(prefix="/dashboard", tags=["dashboard"])


@router.get("/experiments")
def experiments(session: SessionDep, researcher: CurrentResearcher) -> list[dict[str, Any]]:
    """The caller's experiments with status, rounds done of rounds planned and best mean Dice."""
    return dashboard.experiment_summaries(session, owner_id=researcher.id)


@router.get("/experiments/{experiment_id}/page")
def page(experiment_id: str, session: SessionDep, researcher: CurrentResearcher) -> dict[str, Any]:
    """Everything the experiment page first paints, in one answer: ``experiment`` (as
    ``GET /experiments/{id}``), ``series`` (as ``.../series``) and ``rounds`` (as ``.../rounds``)."""
    experiment = exp_crud.get_experiment(
        session, experiment_id=experiment_id, owner_id=researcher.id
    )
    return {
        "experiment": exp_crud.to_public(experiment).model_dump(mode="json"),
        "series": dashboard.metric_series(session, experiment_id=experiment_id),
        "rounds": dashboard.round_summaries(
            session, experiment_id=experiment_id, experiment=experiment
        ),
    }


@router.get("/experiments/{experiment_id}/series")
def series(
    experiment_id: str, session: SessionDep, researcher: CurrentResearcher
) -> dict[str, Any]:
    """Per-site Dice (update, personal, global when reported) and train loss per closed round."""
    exp_crud.get_experiment(session, experiment_id=experiment_id, owner_id=researcher.id)
    return dashboard.metric_series(session, experiment_id=experiment_id)


@router.get("/experiments/{experiment_id}/rounds")
def rounds(
    experiment_id: str, session: SessionDep, researcher: CurrentResearcher
) -> list[dict[str, Any]]:
    """Every round attempt in a few numbers: sites sampled, reported, accepted, samples, bytes,
    and for a DP experiment the (ε, δ) of each closed round and of all rounds up to it."""
    experiment = exp_crud.get_experiment(
        session, experiment_id=experiment_id, owner_id=researcher.id
    )
    return dashboard.round_summaries(session, experiment_id=experiment_id, experiment=experiment)


@router.get("/experiments/{experiment_id}/rounds/{round_number}")
def round_detail(
    experiment_id: str,
    round_number: int,
    session: SessionDep,
    researcher: CurrentResearcher,
    attempt: Annotated[int | None, Query(ge=0)] = None,
) -> dict[str, Any]:
    """One round attempt site by site: status, samples, bytes, metrics, reasons and timeline."""
    exp_crud.get_experiment(session, experiment_id=experiment_id, owner_id=researcher.id)
    return dashboard.round_detail(
        session, experiment_id=experiment_id, round_number=round_number, attempt=attempt
    )


@router.get("/sites")
def sites(session: SessionDep, researcher: CurrentResearcher) -> list[dict[str, Any]]:
    """Every site with its status and last contact, the part of its standing consent policy that
    covers the caller's experiments, and its approval of each of the caller's open experiments."""
    return dashboard_sites.site_approvals(
        session, researcher_id=researcher.id, researcher_name=researcher.name
    )
