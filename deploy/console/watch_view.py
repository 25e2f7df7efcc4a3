"""``fedseg experiments watch``: a live view of the open round and of Dice per site as rounds close."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from data_specs.researcher.experiments import ExperimentPublic
from data_specs.researcher.rounds import RoundPublic, SiteRoundPublic
from deploy.console.researcher_client import TERMINAL_STATUSES, ResearcherClient

LIVE_ROUND_STATES = ("open", "aggregating")


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


@dataclass
class SiteLine:
    """What the view shows for one site: its part in the open round and its latest figures."""

    name: str
    open_status: str = "—"
    dice: float | None = None
    dice_personal: float | None = None
    dice_global: float | None = None
    loss: float | None = None
    last_round: int | None = None
    best_dice: float | None = None


@dataclass
class WatchState:
    """Folds successive ``/rounds`` answers into per-site lines and newly closed rounds."""

    sites: dict[str, SiteLine] = field(default_factory=dict)
    seen_closed: set[tuple[int, int]] = field(default_factory=set)

    def update(self, rounds: list[RoundPublic]) -> list[RoundPublic]:
        """Take the latest rounds; returns the attempts that ended since the last call."""
        ended = []
        for line in self.sites.values():
            line.open_status = "—"
        for rnd in rounds:
            if rnd.status in LIVE_ROUND_STATES:
                for s in rnd.sites:
                    self._line(s).open_status = s.status
                continue
            key = (rnd.number, rnd.attempt)
            if key in self.seen_closed:
                continue
            self.seen_closed.add(key)
            ended.append(rnd)
            for s in rnd.sites:
                if s.status == "accepted" and s.metrics is not None and rnd.status == "closed":
                    self._record(self._line(s), rnd.number, s)
        return ended

    def _line(self, s: SiteRoundPublic) -> SiteLine:
        return self.sites.setdefault(s.site_id, SiteLine(s.site_name))

    @staticmethod
    def _record(line: SiteLine, number: int, s: SiteRoundPublic) -> None:
        m = s.metrics
        assert m is not None
        line.last_round = number
        line.dice, line.loss = m.val_dice, m.train_loss
        line.dice_personal, line.dice_global = m.val_dice_personal, m.val_dice_global
        if m.val_dice is not None:
            line.best_dice = max(line.best_dice or m.val_dice, m.val_dice)


def privacy_text(experiment: ExperimentPublic, rounds: list[RoundPublic]) -> str | None:
    """``ε 1.23 spent after round 4 of budget 8 (δ=1e-05; ε 0.41 per round)`` for a DP
    experiment, None without DP."""
    dp = experiment.config.privacy.dp if experiment.config.privacy else None
    if dp is None:
        return None
    last = next((r for r in reversed(rounds) if r.privacy is not None), None)
    budget = f" of budget {dp.epsilon_budget:g}" if dp.epsilon_budget is not None else ""
    if last is None or last.privacy is None:
        return f"DP on: ε 0 spent{budget} (δ={dp.delta:g}; no round closed yet)"
    p = last.privacy
    return (
        f"DP on: ε {p.epsilon_total:.3f} spent after round {last.number}{budget} "
        f"(δ={p.delta:g}; ε {p.epsilon_round:.3f} per round)"
    )


def open_round(rounds: list[RoundPublic]) -> RoundPublic | None:
    """The attempt now open or aggregating, if any."""
    return next((r for r in reversed(rounds) if r.status in LIVE_ROUND_STATES), None)


def render(
    experiment: ExperimentPublic, rounds: list[RoundPublic], state: WatchState, now: datetime
) -> RenderableType:
    """The live view: a header, a progress bar of the open round and the per-site table."""
    total = experiment.config.rounds
    head = Text.assemble(
        (f"{experiment.name}", "bold"),
        f"  {experiment.id}  ",
        (experiment.status, "green" if experiment.status == "running" else "yellow"),
        f"  {experiment.current_round}/{total} rounds done",
    )
    parts: list[RenderableType] = [head]
    privacy = privacy_text(experiment, rounds)
    if privacy is not None:
        parts.append(Text(privacy, style="magenta"))
    rnd = open_round(rounds)
    if rnd is not None:
        reported = sum(1 for s in rnd.sites if s.reported_at is not None)
        left = max(0.0, (rnd.deadline - now).total_seconds())
        bar = Progress(
            TextColumn(f"round {rnd.number} (attempt {rnd.attempt}) sites reported"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(f"{left:,.0f} s to deadline"),
        )
        bar.add_task("round", total=len(rnd.sampled), completed=reported)
        parts.append(bar)
    else:
        parts.append(Text("no round open", style="dim"))
    table = Table(title="Dice per site (latest closed round)", title_justify="left")
    for name, justify in (
        ("site", "left"),
        ("open round", "left"),
        ("round", "right"),
        ("Dice", "right"),
        ("global", "right"),
        ("personal", "right"),
        ("best", "right"),
        ("loss", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for line in sorted(state.sites.values(), key=lambda x: x.name):
        table.add_row(
            line.name,
            line.open_status,
            str(line.last_round or "—"),
            _fmt(line.dice),
            _fmt(line.dice_global),
            _fmt(line.dice_personal),
            _fmt(line.best_dice),
            _fmt(line.loss),
        )
    parts.append(table)
    return Group(*parts)


def round_line(rnd: RoundPublic) -> str:
    """One human line for an attempt that ended."""
    accepted = [s for s in rnd.sites if s.status == "accepted"]
    dices = [s.metrics.val_dice for s in accepted if s.metrics and s.metrics.val_dice is not None]
    dice = f"{sum(dices) / len(dices):.3f}" if dices else "—"
    reason = f" ({rnd.reason})" if rnd.reason else ""
    p = rnd.privacy
    eps = f"; ε {p.epsilon_round:.3f} this round, {p.epsilon_total:.3f} in total" if p else ""
    return (
        f"round {rnd.number} attempt {rnd.attempt}: {rnd.status}{reason}; "
        f"{len(accepted)}/{len(rnd.sampled)} sites accepted, mean Dice {dice}{eps}"
    )


def round_record(rnd: RoundPublic) -> str:
    """One JSON line for an attempt that ended (``--json``)."""
    return json.dumps(
        {
            "round": rnd.number,
            "attempt": rnd.attempt,
            "status": rnd.status,
            "reason": rnd.reason,
            "sampled": len(rnd.sampled),
            "privacy": rnd.privacy.model_dump() if rnd.privacy else None,
            "sites": [
                {
                    "site": s.site_name,
                    "status": s.status,
                    "num_samples": s.num_samples,
                    "metrics": s.metrics.model_dump(exclude_none=True) if s.metrics else None,
                    "reject_reason": s.reject_reason,
                }
                for s in rnd.sites
            ],
        }
    )


def watch(
    client: ResearcherClient,
    experiment_id: str,
    *,
    console: Console,
    interval_s: float = 2.0,
    as_json: bool = False,
    timeout_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ExperimentPublic:
    """Follow an experiment until it completes, fails or is aborted (or ``timeout_s`` passes).

    Args:
        client: a researcher client.
        experiment_id: the experiment.
        console: where to draw.
        interval_s: seconds between polls. Default 2.
        as_json: print one JSON line per ended round instead of the live view. Default False.
        timeout_s: stop following after this many seconds. Default None (until it ends).
        sleep: the pause between polls (tests pass a fake). Default ``time.sleep``.

    Returns:
        The experiment as last seen.
    """
    from rich.live import Live

    state = WatchState()
    start = time.monotonic()
    live = None if as_json else Live(console=console, auto_refresh=False, transient=False)
    if live is not None:
        live.start()
    try:
        while True:
            exp = client.experiment(experiment_id)
            rounds = client.rounds(experiment_id)
            for rnd in state.update(rounds):
                console.print(round_record(rnd) if as_json else round_line(rnd), soft_wrap=True)
            if live is not None:
                live.update(render(exp, rounds, state, datetime.now(UTC)), refresh=True)
            if exp.status in TERMINAL_STATUSES:
                return exp
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                return exp
            sleep(interval_s)
    finally:
        if live is not None:
            live.stop()
