"""Live progress of an experiment: one line per closed round (sites reported, loss, Dice)."""

from __future__ import annotations

import statistics
from typing import Any

from rich.console import Console

from data_specs.researcher.experiments import ExperimentPublic
from deploy.console.researcher_client import ResearcherClient


class RoundProgress:
    """Polls the rounds API and prints each round once it closes.

    Args:
        researcher: a researcher client.
        experiment_id: the experiment to follow.
        console: where to print. Default a new ``Console``.
    """

    def __init__(
        self, researcher: ResearcherClient, experiment_id: str, console: Console | None = None
    ) -> None:
        self.researcher = researcher
        self.experiment_id = experiment_id
        self.console = console or Console()
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.round_seconds: list[float] = []
        self.bytes_up = 0
        self.bytes_down = 0
        self._printed: set[tuple[int, int]] = set()
        self._last_status = ""

    def update(self, experiment: ExperimentPublic | None = None) -> None:
        """Fetch the rounds and print those that closed since the last call."""
        if experiment is not None and experiment.status != self._last_status:
            self._last_status = experiment.status
            self.console.print(f"experiment {experiment.id}: {experiment.status}")
        for rnd in self.researcher.rounds(self.experiment_id):
            key = (rnd.number, rnd.attempt)
            if key in self._printed or rnd.status not in ("closed", "failed"):
                continue
            self._printed.add(key)
            self._record(rnd)

    def _record(self, rnd: Any) -> None:
        reported = [s for s in rnd.sites if s.status == "accepted"]
        losses = [
            s.metrics.train_loss for s in reported if s.metrics and s.metrics.train_loss is not None
        ]
        dices = []
        for s in reported:
            if s.metrics and s.metrics.val_dice is not None:
                dices.append(s.metrics.val_dice)
                self.history.setdefault(s.site_name, []).append((rnd.number, s.metrics.val_dice))
            self.bytes_up += s.bytes_up
            self.bytes_down += s.bytes_down
        if rnd.closed_at is not None:
            self.round_seconds.append((rnd.closed_at - rnd.opened_at).total_seconds())
        loss = f"{statistics.fmean(losses):.3f}" if losses else "—"
        dice = f"{statistics.fmean(dices):.3f}" if dices else "—"
        extra = f" ({rnd.reason})" if rnd.reason else ""
        self.console.print(
            f"round {rnd.number} attempt {rnd.attempt}: {rnd.status}{extra}; "
            f"{len(reported)}/{len(rnd.sampled)} sites reported, "
            f"train loss {loss}, validation Dice {dice}"
        )
