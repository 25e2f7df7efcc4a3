"""What ``fedseg demo`` takes and what it measured: plain data shared by the demo, its report and the CLI.

Kept apart from ``deploy.launcher.demo`` so the report module and the CLI defaults read it without
importing the demo itself (no import cycle, one place for the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class DemoConfig:
    """Knobs of the demo (defaults finish in about two minutes on 2 CPU cores).

    Args:
        sites: federated synthetic hospitals. Default 3.
        cases: cases per hospital. Default 16.
        rounds: federated rounds. Default 6.
        local_epochs: local epochs per round. Default 8.
        seed: seed of the data, the sampling and the training. Default 0.
        work_dir: scratch folder (data, databases, logs); recreated. Default ``demo_work``.
        report_dir: report folder (markdown and PNG). Default ``demo_report``.
        adapt_steps: test-time adaptation steps at the outside hospital. Default 40.
    """

    sites: int = 3
    cases: int = 16
    rounds: int = 6
    local_epochs: int = 8
    seed: int = 0
    work_dir: Path = Path("demo_work")
    report_dir: Path = Path("demo_report")
    adapt_steps: int = 40


@dataclass
class DemoResult:
    """What the demo measured."""

    experiment_id: str
    dice: dict[str, dict[str, float | None]]  # site -> model -> mean test Dice
    history: dict[str, list[tuple[int, float]]]  # site -> [(round, validation Dice)]
    round_seconds: list[float]
    report: Path
    seconds: float
    extras: dict[str, Any] = field(default_factory=dict)
