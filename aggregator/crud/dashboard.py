"""Read-only views for the dashboard: experiment summaries and per-site metric series across rounds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.crud import experiments as exp_crud
from aggregator.errors import NotFoundError
from aggregator.privacy.privacy_budget import sample_rate
from aggregator.storage.db.models import Experiment, Round, RoundStatus, Site, Task, TaskStatus
from data_specs.privacy.accountant import epsilons

# Metric keys drawn as curves; a site reports some or all of them (others are ignored here).
SERIES_KEYS = ("val_dice", "val_dice_personal", "val_dice_global", "train_loss")


def _accepted_metrics(session: Session, experiment_ids: list[str]) -> list[Any]:
    """(experiment, site, site name, round number, attempt, metrics) of every accepted update."""
    if not experiment_ids:
        return []
    query = (
        select(
            Task.experiment_id,
            Task.site_id,
            Site.name,
            Round.number,
            Round.attempt,
            Task.metrics,
        )
        .join(Round, Round.id == Task.round_id)
        .join(Site, Site.id == Task.site_id)
        .where(
            Task.experiment_id.in_(experiment_ids),
            Task.status == TaskStatus.ACCEPTED,
            Round.status == RoundStatus.CLOSED,
        )
        .order_by(Round.number, Round.attempt, Task.site_id)
    )
    return list(session.execute(query).all())


def experiment_summaries(session: Session, *, owner_id: str) -> list[dict[str, Any]]:
    """The owner's experiments, newest first, each with rounds done and its best mean Dice.

    Best Dice is the highest, over closed rounds, of the mean ``val_dice`` the accepted sites
    reported for that round (None before any site reported one).
    """
    experiments = list(
        session.scalars(
            select(Experiment)
            .where(Experiment.owner_id == owner_id)
            .order_by(Experiment.created_at.desc())
        )
    )
    per_round: dict[tuple[str, int], list[float]] = {}
    for exp_id, _site, _name, number, _attempt, metrics in _accepted_metrics(
        session, [e.id for e in experiments]
    ):
        dice = (metrics or {}).get("val_dice")
        if isinstance(dice, int | float):
            per_round.setdefault((exp_id, number), []).append(float(dice))
    best: dict[str, float] = {}
    for (exp_id, _number), values in per_round.items():
        mean = sum(values) / len(values)
        best[exp_id] = max(best.get(exp_id, mean), mean)
    return [
        {
            "id": e.id,
            "name": e.name,
            "status": e.status,
            "rounds": int(e.config.get("rounds", 0)),
            "rounds_done": e.current_round,
            "best_dice": best.get(e.id),
            "created_at": e.created_at,
            "started_at": e.started_at,
            "finished_at": e.finished_at,
        }
        for e in experiments
    ]


def metric_series(session: Session, *, experiment_id: str) -> dict[str, Any]:
    """Per-site metric curves of one experiment, one value per closed round (null where absent).

    Returns:
        ``{"rounds": [1, 2, ...], "sites": [{"site_id", "site_name", "val_dice": [...],
        "val_dice_personal": [...], "val_dice_global": [...], "train_loss": [...]}]}``; a key
        whose values are all null is left out of that site. A retried round counts once (its
        last closed attempt).
    """
    rows = _accepted_metrics(session, [experiment_id])
    rounds = sorted({number for _e, _s, _n, number, _a, _m in rows})
    index = {number: i for i, number in enumerate(rounds)}
    sites: dict[str, dict[str, Any]] = {}
    for _exp, site_id, name, number, _attempt, metrics in rows:
        entry = sites.setdefault(
            site_id,
            {"site_id": site_id, "site_name": name}
            | {k: [None] * len(rounds) for k in SERIES_KEYS},
        )
        for key in SERIES_KEYS:
            value = (metrics or {}).get(key)
            if isinstance(value, int | float):
                entry[key][index[number]] = float(value)
    out = []
    for entry in sorted(sites.values(), key=lambda s: s["site_name"]):
        out.append(
            {
                k: v
                for k, v in entry.items()
                if k not in SERIES_KEYS or any(x is not None for x in v)
            }
        )
    return {"rounds": rounds, "sites": out}


def round_summaries(
    session: Session, *, experiment_id: str, experiment: Experiment | None = None
) -> list[dict[str, Any]]:
    """Every round attempt in a few numbers (the rounds table), oldest first; cheap at any size.

    Each: ``number``, ``attempt``, ``status``, ``reason``, ``sampled`` (count), ``reported``,
    ``accepted``, ``rejected`` (rejected or failed), ``samples``, ``bytes_up``, ``bytes_down``,
    ``opened_at``, ``deadline``, ``closed_at`` and ``privacy``: for a closed round of an
    experiment with differential privacy (``experiment`` given), ``{"epsilon_round",
    "epsilon_total", "delta", "epsilon_budget"}`` as ``GET /experiments/{id}/rounds`` reports
    them, else None.
    """
    rounds = list(
        session.scalars(
            select(Round)
            .where(Round.experiment_id == experiment_id)
            .order_by(Round.number, Round.attempt)
        )
    )
    tasks = session.execute(
        select(
            Task.round_id,
            Task.status,
            Task.num_samples,
            Task.bytes_up,
            Task.bytes_down,
            Task.reported_at,
        ).where(Task.experiment_id == experiment_id)
    ).all()
    totals: dict[str, dict[str, int]] = {}
    for round_id, status, samples, up, down, reported in tasks:
        t = totals.setdefault(
            round_id,
            dict.fromkeys(
                ("reported", "accepted", "rejected", "samples", "bytes_up", "bytes_down"), 0
            ),
        )
        t["reported"] += reported is not None
        t["accepted"] += status == TaskStatus.ACCEPTED
        t["rejected"] += status in (TaskStatus.REJECTED, TaskStatus.FAILED)
        t["samples"] += samples or 0
        t["bytes_up"] += up
        t["bytes_down"] += down
    empty = dict.fromkeys(
        ("reported", "accepted", "rejected", "samples", "bytes_up", "bytes_down"), 0
    )
    privacy = round_privacy(experiment)
    return [
        {
            "number": r.number,
            "attempt": r.attempt,
            "status": r.status,
            "reason": r.reason,
            "sampled": len(r.sampled),
            **totals.get(r.id, empty),
            "opened_at": r.opened_at,
            "deadline": r.deadline_at,
            "closed_at": r.closed_at,
            "privacy": privacy(r.number) if r.status == RoundStatus.CLOSED else None,
        }
        for r in rounds
    ]


def round_privacy(experiment: Experiment | None) -> Callable[[int], dict[str, Any] | None]:
    """``privacy(n)``: the (ε, δ) after round ``n`` of a DP experiment (None without DP).

    The same figures as ``GET /experiments/{id}/rounds`` (``privacy_budget.privacy_after``),
    computed for every round in one pass (``accountant.epsilons``).
    """
    cfg = None if experiment is None else exp_crud.config_of(experiment)
    dp = cfg.privacy.dp if cfg is not None and cfg.privacy else None
    if experiment is None or cfg is None or dp is None:
        return lambda _n: None
    q = sample_rate(cfg, len(experiment.participants or []))
    totals = epsilons(dp.noise_multiplier, q, max(1, experiment.current_round), dp.delta)

    def privacy(number: int) -> dict[str, Any] | None:
        if not 1 <= number <= len(totals):
            return None
        return {
            "epsilon_round": totals[0],
            "epsilon_total": totals[number - 1],
            "delta": dp.delta,
            "epsilon_budget": dp.epsilon_budget,
        }

    return privacy


def round_detail(
    session: Session, *, experiment_id: str, round_number: int, attempt: int | None = None
) -> dict[str, Any]:
    """One round attempt (default its last) site by site, with when each site worked.

    Times are seconds since the attempt opened: ``delivered_s`` (the site fetched the task),
    ``reported_s`` (its update or failure arrived), ``train_s`` (local training time it
    reported), all null where unknown. Each site also has its status, samples, bytes, metrics
    and reject or failure reason.

    Raises:
        NotFoundError: no such round attempt.
    """
    query = select(Round).where(Round.experiment_id == experiment_id, Round.number == round_number)
    if attempt is not None:
        query = query.where(Round.attempt == attempt)
    rnd = session.scalar(query.order_by(Round.attempt.desc()).limit(1))
    if rnd is None:
        raise NotFoundError(f"experiment {experiment_id} has no round {round_number}")
    rows = session.execute(
        select(Task, Site.name)
        .join(Site, Site.id == Task.site_id)
        .where(Task.round_id == rnd.id)
        .order_by(Site.name)
    ).all()
    opened = rnd.opened_at

    def since(moment: Any) -> float | None:
        return None if moment is None else round((moment - opened).total_seconds(), 3)

    sites = []
    for task, name in rows:
        train = (task.metrics or {}).get("train_seconds")
        sites.append(
            {
                "site_id": task.site_id,
                "site_name": name,
                "status": task.status,
                "num_samples": task.num_samples,
                "bytes_up": task.bytes_up,
                "bytes_down": task.bytes_down,
                "metrics": task.metrics,
                "reject_reason": task.reject_reason,
                "failure_reason": task.failure_reason,
                "delivered_s": since(task.delivered_at),
                "reported_s": since(task.reported_at),
                "train_s": float(train) if isinstance(train, int | float) else None,
            }
        )
    return {
        "round": round_number,
        "attempt": rnd.attempt,
        "status": rnd.status,
        "reason": rnd.reason,
        "deadline_s": since(rnd.deadline_at),
        "closed_s": since(rnd.closed_at),
        "sites": sites,
    }
