"""The demo's report folder: README.md with the table, plus PNG plots and the inference picture."""

from __future__ import annotations

from typing import TYPE_CHECKING

from deploy.launcher.report import (
    markdown_table,
    plot_dice_per_round,
    plot_grouped_bars,
    report_header,
    write_report,
)

if TYPE_CHECKING:
    from deploy.launcher.demo_config import DemoConfig, DemoResult


def write_demo_report(result: DemoResult, cfg: DemoConfig) -> None:
    """Write ``cfg.report_dir/README.md``, ``dice_per_round.png`` and ``models.png``."""
    out = cfg.report_dir.resolve()
    plot_dice_per_round(result.history, out / "dice_per_round.png")
    plot_grouped_bars(
        result.dice, out / "models.png", title="Mean test Dice: global, personal, routed"
    )
    rows = [
        [site, row.get("global"), row.get("personal"), row.get("routed")]
        for site, row in result.dice.items()
    ]
    rounds = ", ".join(f"{s:.1f}" for s in result.round_seconds)
    text = (
        report_header("fedseg demo", "make demo  (fedseg demo)")
        + f"""
Experiment `{result.experiment_id}`: {cfg.sites} synthetic hospitals (own scanner each), {cfg.rounds}
rounds of FedAvg with IOP-FL inside personalisation (alpha 0.1), {cfg.local_epochs} local epochs;
then an outside hospital that never took part adapts the routed model on its unlabelled scans
({cfg.adapt_steps} steps, {result.extras.get("adapt_seconds", float("nan")):.1f} s).
Everything ran as separate processes over HTTP on 127.0.0.1; {result.seconds:.0f} s in all.

## Mean test Dice per hospital (foreground classes)

{markdown_table(["hospital", "global", "personal (IOP-FL)", "routed (outside)"], rows)}

Round wall times (s): {rounds}

![Dice per round](dice_per_round.png)

![Global, personal and routed](models.png)

## Clinician inference on an outside scan

`fedseg site infer SCAN -o mask.nii.gz --model routed --png inference.png`: the mask keeps the
scan's shape and affine.

![Inference](inference.png)
"""
    )
    write_report(out / "README.md", text)
