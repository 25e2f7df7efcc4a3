"""``/dashboard``: small read-only views the web dashboard needs (summaries, curves, round details)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from aggregator.api.deps import CurrentResearcher, SessionDep
from aggregator.crud import dashboard
from aggregator.crud import experiments as exp_crud

router = APIRouter(prefix="/dashboard", tags=["dashboard"])


@router.get("/experiments")
def experiments(session: SessionDep, researcher: CurrentResearcher) -> list[dict[str, Any]]:
    """The caller's experiments with status, rounds done of rounds planned and best mean Dice."""
    return dashboard.experiment_summaries(session, owner_id=researcher.id)


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
    """Every round attempt in a few numbers: sites sampled, reported, accepted, samples, bytes."""
    exp_crud.get_experiment(session, experiment_id=experiment_id, owner_id=researcher.id)
    return dashboard.round_summaries(session, experiment_id=experiment_id)


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
