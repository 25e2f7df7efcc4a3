"""Real training on ACDC for ``round_timeline_bench --acdc``: five hospitals, fedseg alone.

Each ``fedseg site run`` agent (one torch thread) trains 20 Adam steps per round, validates
every 3 rounds (``TrainConfig.validate_every``) and reads its scans once (the site data cache);
the report gives the round time outside the slowest site's train + validate and each round's
data loading time next to the first round's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.acdc_common import ACDC_SPEC, HOSPITALS, RESULTS, acdc_sites, fresh_dir, seconds_str
from benchmarks.round_timeline import (
    LoadSampler,
    RoundFigures,
    analyse,
    cpu_lines,
    run_federation,
)


@dataclass(frozen=True)
class AcdcSetting:
    hospitals: tuple[str, ...]
    rounds: int
    max_steps: int
    validate_every: int = 2
    batch_size: int = 8


# 6 rounds of 20 steps (about 2 min on 2 idle cores): five rounds after the first for the
# median; the sites validate in rounds 3 and 6, so rounds 2, 4 and 5 are the train-only rounds
# whose data loading the cache serves. ``--rounds`` and ``--steps`` change it.
FULL = AcdcSetting(hospitals=HOSPITALS, rounds=6, max_steps=20, validate_every=3)
QUICK = AcdcSetting(hospitals=HOSPITALS[:2], rounds=3, max_steps=2)


def run_acdc(args: argparse.Namespace, cmd: str) -> None:
    """Run the ACDC federation and write its report and Gantt chart."""
    from benchmarks.round_gantt import plot_gantt
    from data_specs.constants import OptimizerName, PersonalizationMethod
    from data_specs.researcher.experiments import ExperimentCreate
    from data_specs.wire import PersonalizationConfig, TrainConfig
    from deploy.launcher.processes import fedseg_argv
    from deploy.launcher.report import write_report

    setting = QUICK if args.quick else FULL
    if args.rounds is not None or args.steps is not None:
        setting = replace(
            setting,
            rounds=args.rounds or setting.rounds,
            max_steps=args.steps or setting.max_steps,
        )
    from benchmarks.machine_speed import measure, speed_line

    before = measure()
    started = time.monotonic()
    work = fresh_dir(args.work_dir)
    sites = acdc_sites(args.acdc_dir, work / "manifests", seed=args.seed, val_frac=0.2)
    manifests = {h: p for h, p in sites.by_name().items() if h in setting.hospitals}

    def agent(name: str, token: str, site_work: Path) -> tuple[list[str], dict[str, str]]:
        return fedseg_argv("site", "run", "--log-level", "WARNING"), {
            "FEDSEG_SITE_MANIFEST": str(manifests[name]),
            "FEDSEG_SITE_WORK_DIR": str(site_work),
            "FEDSEG_SITE_ALLOW_INSECURE_HTTP": "true",  # loopback only
            "FEDSEG_SITE_DEVICE": "cpu",
            "FEDSEG_SITE_POLL_WAIT_S": "30",
            "FEDSEG_SITE_ENROLLMENT_TOKEN": token,
            "FEDSEG_SITE_THREADS": "1",
            "FEDSEG_SITE_ACCEPT_EXPERIMENTS": '["*"]',  # consent to the benchmark's experiment
        }

    def experiment(ids: list[str]) -> ExperimentCreate:
        return ExperimentCreate(
            name="round-timeline-acdc",
            spec=ACDC_SPEC,
            rounds=setting.rounds,
            fraction=1.0,
            min_sites=len(ids),
            sites=ids,
            train=TrainConfig(
                batch_size=setting.batch_size,
                lr=3e-3,
                optimizer=OptimizerName.ADAM,
                max_steps=setting.max_steps,
                validate_every=setting.validate_every,
                personalization=PersonalizationConfig(method=PersonalizationMethod.NONE),
            ),
            round_deadline_s=1800,
            seed=args.seed,
        )

    with LoadSampler() as load:
        run = run_federation(work, list(manifests), agent, experiment)
    figures = analyse(run)
    gantt = RESULTS / "round_timeline_acdc_gantt.png"
    plot_gantt(
        figures,
        gantt,
        t0=run.t_launch,
        title=f"fedseg, {len(manifests)} ACDC hospitals, real training",
    )
    startup = figures[0].opened - run.t_launch
    lines = _report(figures, setting, startup, cmd, gantt, time.monotonic() - started)
    lines[-3:-3] = [
        cpu_lines(run, setting.rounds, sleeping=False),
        "",
        f"1-min load average (min / median / max) during the run: {load.summary()}.",
        "",
        speed_line(before, measure()),
        "",
    ]
    write_report(RESULTS / "round_timeline_acdc.md", "\n".join(lines))
    print(f"report written to {RESULTS / 'round_timeline_acdc.md'} and {gantt}")


def _report(
    figures: list[RoundFigures],
    setting: AcdcSetting,
    startup: float,
    cmd: str,
    gantt: Path,
    total: float,
) -> list[str]:
    from deploy.launcher.report import markdown_table, report_header

    later = figures[1:] or figures
    first_load = figures[0].mean_phase("load")
    # A validating round also loads the validation split (its first time: a cache miss), so
    # the cache's effect on training data is read off the later train-only rounds.
    train_only = [f for f in later if f.max_phase("validate") == 0.0] or later
    later_load = statistics.median(f.mean_phase("load") for f in train_only)
    over = statistics.median(f.overhead_s for f in later)
    cycle = statistics.median(f.cycle_s for f in later)
    return [
        report_header("Round timeline with real training (ACDC, five hospitals)", cmd),
        "## Setting",
        "",
        f"- `fedseg aggregator serve` and {len(setting.hospitals)} `fedseg site run` processes "
        f"(ACDC hospitals {', '.join(setting.hospitals)}, `FEDSEG_SITE_THREADS=1`) on "
        f"127.0.0.1; {setting.rounds} rounds of FedAvg, {setting.max_steps} Adam steps per "
        f"round (batch {setting.batch_size}, 128×128 slices), validation every "
        f"{setting.validate_every} rounds and in the last, 20 % validation patients.",
        f"- {os.cpu_count()} cores, every process of the benchmark at nice {os.nice(0)} "
        f"(1-min load average {os.getloadavg()[0]:.1f} at the end; it counts the benchmark's "
        f"own {len(setting.hospitals) + 1} processes, the sites' training among them, and any "
        "other work"
        + (": **wall times under contention**" if os.nice(0) > 0 else "")
        + "; the CPU seconds below are not inflated by the load).",
        "",
        "## Summary",
        "",
        f"- Round time outside the slowest site's train + validate (close to close, median of "
        f"rounds 2+): **{over:.3f} s** of a {cycle:.2f} s round "
        f"({100 * over / max(cycle, 1e-9):.1f} %).",
        f"- Data loading (datasets and model built; mean over sites): round 1 "
        f"{first_load:.3f} s, later train-only rounds (median) {later_load:.4f} s: "
        f"**{first_load / max(later_load, 1e-9):.0f}× less** from the site data cache.",
        f"- Start-up to round 1: {startup:.2f} s.",
        "",
        markdown_table(
            [
                "round",
                "cycle s",
                "slowest train+val s",
                "overhead s",
                "load s (mean)",
                "validate s (max)",
                "close latency ms",
                "aggregate ms",
            ],
            [
                [
                    f.number,
                    f"{f.cycle_s:.2f}",
                    f"{f.critical_s:.2f}",
                    f"{f.overhead_s:.3f}",
                    f"{f.mean_phase('load'):.3f}",
                    f"{f.max_phase('validate'):.2f}",
                    _ms(f.close_latency_s),
                    _ms(f.aggregate_s),
                ]
                for f in figures
            ],
        ),
        "",
        f"![Gantt chart]({gantt.name})",
        "",
        f"Total benchmark time: {seconds_str(total)}.",
    ]


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{1000 * seconds:.0f}"
