"""Rounds at the speed of the work: fedseg and Flower side by side, and a timeline of every round.

``python -m benchmarks.round_timeline_bench [--quick] [--flower-venv DIR | --no-flower]
[--clients N]`` writes ``benchmarks/results/round_timeline.md`` and ``round_timeline_gantt.png``
(``round_timeline_<N>sites.*`` for N other than 5): the Flower
peer harness's workload (N = 5 clients, a fixed 2 s "training" of noise + sleep, the weights
of the 2D MONAI U-Net, 1.6 MB, 10 rounds) on fedseg (``fedseg aggregator serve`` and five
``benchmarks.sleep_site`` agents: the real agent loop with the sleep as its trainer) and, in
the same run, on Flower 1.42 in deployment mode (``shared/peers/flower_overhead/driver.py``
in its own venv; when there is none the report says so and shows fedseg alone).

``python -m benchmarks.round_timeline_bench --acdc [--quick] [--rounds N] [--steps K]`` writes
``round_timeline_acdc.md`` and ``round_timeline_acdc_gantt.png``: fedseg alone, five ACDC
hospitals (``fedseg site run``, one torch thread each), real training at a small budget,
validation every 3 rounds (6 rounds of 20 steps unless told).

Per round: cycle = this round's close − the previous close (round 1: its opening); critical
= the slowest site's train + validate (from the sites' timelines); overhead = cycle −
critical. Start-up = launch of the first process to the opening of round 1 (fedseg) or to the
ServerApp's first ``configure_train`` (Flower). fedseg's processes all start at once, as
Flower's do: the agents with ``FEDSEG_SITE_ENROLLMENT_TOKEN=-``, each reading its token on
standard input once the aggregator is healthy and its site is registered (a new federation:
registration and enrolment are inside the start-up).
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.acdc_common import RESULTS, command_line, fresh_dir, parse_args, seconds_str
from benchmarks.round_timeline import (
    FederationRun,
    LoadSampler,
    RoundFigures,
    analyse,
    cpu_lines,
    run_federation,
)
from data_specs.constants import NormKind
from data_specs.task_spec import TaskSpec

NAME = "round_timeline_bench"
PEERS = Path(__file__).resolve().parents[2] / "shared" / "peers" / "flower_overhead"
TRAIN_SECONDS = 2.0
# MONAI UNet(2D, 1 -> 2 channels, (16, 32, 64, 128), strides 2, 2 residual units): the Flower
# harness's unet2d (49 tensors, 1,606,420 bytes); fedseg builds it with affine instance norm,
# so 26 more small tensors: 75 tensors, 1,611,044 bytes.
SLEEP_SPEC = TaskSpec(
    spatial_dims=2,
    in_channels=1,
    out_channels=2,
    channels=(16, 32, 64, 128),
    strides=(2, 2, 2),
    num_res_units=2,
    norm=NormKind.INSTANCE,
    patch_size=(64, 64),
)


@dataclass(frozen=True)
class Setting:
    clients: int
    rounds: int


FULL = Setting(clients=5, rounds=10)
QUICK = Setting(clients=3, rounds=3)


@dataclass
class FlowerResult:
    """Flower's figures from the harness's result JSON, or why there are none."""

    overhead_s: list[float]
    cycle_overhead_s: list[float]
    startup_s: float
    note: str = ""


def main(argv: list[str] | None = None) -> None:
    import argparse

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--acdc", action="store_true")
    pre.add_argument("--no-flower", action="store_true")
    pre.add_argument("--flower-venv", type=Path, default=os.environ.get("FLWR_VENV"))
    pre.add_argument("--flower-timeout", type=float, default=2400.0)
    pre.add_argument(
        "--clients",
        type=int,
        default=None,
        help="sites (and Flower clients) on this host; other than 5 writes round_timeline_<N>sites.md",
    )
    pre.add_argument("--rounds", type=int, default=None, help="--acdc: rounds (default 6)")
    pre.add_argument("--steps", type=int, default=None, help="--acdc: Adam steps a round (20)")
    extra, rest = pre.parse_known_args(argv)
    args = parse_args(NAME, __doc__, rest)
    if extra.acdc:
        if (extra.rounds is not None and extra.rounds < 2) or (
            extra.steps is not None and extra.steps < 1
        ):
            raise SystemExit("--rounds must be at least 2 and --steps at least 1")
        args.rounds, args.steps = extra.rounds, extra.steps
        from benchmarks.round_timeline_acdc import run_acdc

        run_acdc(args, command_line(NAME, argv))
        return
    setting = QUICK if args.quick else FULL
    if extra.clients is not None:
        if extra.clients < 1:
            raise SystemExit("--clients must be at least 1")
        setting = Setting(clients=extra.clients, rounds=setting.rounds)
    stem = (
        "round_timeline"
        if setting.clients == FULL.clients
        else f"round_timeline_{setting.clients}sites"
    )
    from benchmarks.machine_speed import measure, speed_line

    before = measure()
    started = time.monotonic()
    work = fresh_dir(args.work_dir)
    with LoadSampler() as fed_load:
        run = _fedseg_sleep(work / "fedseg", setting, args.seed)
    figures = analyse(run)
    with LoadSampler() as flower_load:
        flower = (
            FlowerResult([], [], float("nan"), "not run (--no-flower)")
            if extra.no_flower
            else _flower(work / "flower", setting, extra.flower_venv, extra.flower_timeout)
        )
    loads = (fed_load.summary(), flower_load.summary())
    speed = speed_line(before, measure())
    from benchmarks.round_gantt import plot_gantt

    gantt = RESULTS / f"{stem}_gantt.png"
    sites = "1 site" if setting.clients == 1 else f"{setting.clients} sites"
    title = f"fedseg, {sites}, 2 s sleep as training"
    plot_gantt(figures, gantt, t0=run.t_launch, title=title)
    (work / "rounds.json").write_text(
        json.dumps([r.model_dump(mode="json") for r in run.rounds], indent=1)
    )
    from deploy.launcher.report import write_report

    report = _report(run, figures, flower, setting, time.monotonic() - started, gantt, loads, speed)
    write_report(RESULTS / f"{stem}.md", report.replace("{cmd}", command_line(NAME, argv)))
    print(f"report written to {RESULTS / f'{stem}.md'} and {gantt}")


def _fedseg_sleep(work: Path, setting: Setting, seed: int) -> FederationRun:
    from data_specs.constants import PersonalizationMethod
    from data_specs.researcher.experiments import ExperimentCreate
    from data_specs.wire import PersonalizationConfig, TrainConfig

    def agent(name: str, token: str, site_work: Path) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, "-m", "benchmarks.sleep_site", "--train-seconds", "2.0"]
        return argv, {
            "FEDSEG_SITE_WORK_DIR": str(site_work),
            "FEDSEG_SITE_ALLOW_INSECURE_HTTP": "true",  # loopback only
            "FEDSEG_SITE_ENROLLMENT_TOKEN": token,
            "FEDSEG_SITE_POLL_WAIT_S": "30",
            "FEDSEG_SITE_THREADS": "1",
            "FEDSEG_SITE_ACCEPT_EXPERIMENTS": '["*"]',  # consent to the benchmark's experiment
        }

    def experiment(ids: list[str]) -> ExperimentCreate:
        return ExperimentCreate(
            name="round-timeline",
            spec=SLEEP_SPEC,
            rounds=setting.rounds,
            fraction=1.0,
            min_sites=len(ids),
            sites=ids,
            train=TrainConfig(
                personalization=PersonalizationConfig(method=PersonalizationMethod.NONE)
            ),
            round_deadline_s=600,
            seed=seed,
        )

    names = [f"site_{i + 1}" for i in range(setting.clients)]
    return run_federation(work, names, agent, experiment)


def _flower(work: Path, setting: Setting, venv: Path | None, timeout_s: float) -> FlowerResult:
    python = venv / "bin" / "python" if venv else None
    if python is None or not python.exists():
        return FlowerResult([], [], float("nan"), "not run: no Flower venv (set FLWR_VENV)")
    if not (PEERS / "driver.py").exists():
        return FlowerResult([], [], float("nan"), f"not run: no harness at {PEERS}")
    work.mkdir(parents=True, exist_ok=True)
    out = work / "flower.json"
    cmd = [
        str(python), str(PEERS / "driver.py"), "--model", "unet2d",
        "--clients", str(setting.clients), "--rounds", str(setting.rounds),
        "--train-seconds", str(TRAIN_SECONDS), "--out", str(out),
        "--workdir", str(work / "run"), "--venv", str(venv), "--idle-busy-max", "0",
        "--timeout", str(timeout_s),
    ]  # fmt: skip
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s + 900, check=False
        )
    except subprocess.TimeoutExpired:
        return FlowerResult(
            [], [], float("nan"), f"failed: driver still running after {timeout_s + 900:.0f} s"
        )
    (work / "driver.log").write_text(proc.stdout + proc.stderr)
    if not out.exists():
        return FlowerResult([], [], float("nan"), f"failed: exit {proc.returncode} (driver.log)")
    rec = json.loads(out.read_text())
    if "error" in rec:
        return FlowerResult([], [], float("nan"), f"failed: {rec['error'][:200]}")
    rounds = rec["serverapp"]["rounds"]
    overhead = [r["t_end"] - r["t_start"] - TRAIN_SECONDS for r in rounds]
    ends = [rounds[0]["t_start"]] + [r["t_end"] for r in rounds]
    cycle = [b - a - TRAIN_SECONDS for a, b in itertools.pairwise(ends)]
    return FlowerResult(overhead, cycle, rounds[0]["t_start"] - rec["t_launch"])


def _report(
    run: FederationRun,
    figures: list[RoundFigures],
    flower: FlowerResult,
    setting: Setting,
    total: float,
    gantt: Path,
    loads: tuple[str, str],
    speed: str = "",
) -> str:
    from deploy.launcher.report import markdown_table, report_header

    later = figures[1:] or figures
    fed_over = statistics.median(f.overhead_s for f in later)
    fed_span = statistics.median(f.span_overhead_s for f in later)
    startup = figures[0].opened - run.t_launch
    load = os.getloadavg()[0]
    lines = [
        report_header("Round overhead side by side: fedseg and Flower 1.42", "{cmd}"),
        "## Setting",
        "",
        f"- The Flower peer harness's workload on both: N = {setting.clients} clients, "
        f'{setting.rounds} rounds, a fixed {TRAIN_SECONDS:.0f} s "training" (Gaussian noise '
        "on every weight + sleep), the 49 float32 tensors of the 2D MONAI U-Net (1,606,420 "
        "bytes; fedseg's build adds affine instance-norm weights: 75 tensors, 1,611,044 "
        "bytes) each way, FedAvg, every client every round, no federated evaluation.",
        "- fedseg: `fedseg aggregator serve` (SQLite, default settings) and one "
        "`python -m benchmarks.sleep_site` process per site: the real agent loop (long poll, "
        "download and verify, restart-safe state, write and upload the update) with the "
        "sleep as its trainer. The agents start together with the aggregator and read their "
        "enrollment tokens on standard input (`FEDSEG_SITE_ENROLLMENT_TOKEN=-`), which the "
        "benchmark writes once the aggregator is healthy and has registered their sites; the "
        "project's bytecode is compiled before the clock starts, as the images do. "
        "Flower: `shared/peers/flower_overhead/driver.py` (deployment "
        "mode: SuperLink, SuperNodes, a ClientApp process per message), in its own venv.",
        f"- One host, {os.cpu_count()} cores; 1-min load average "
        f"(min / median / max) during the fedseg part {loads[0]}, during the Flower part "
        f"{loads[1]}, {load:.1f} when the report was written. It counts each system's own "
        "processes (Flower's start a process per message) as well as any other work. Every "
        f"process of this benchmark ran at nice {os.nice(0)}"
        + (" below the other work: **wall times under contention**" if os.nice(0) > 0 else "")
        + "; the CPU seconds below are what the machine's load does not inflate.",
        *([f"- {speed}"] if speed else []),
        "",
        "## Summary",
        "",
    ]
    rows = [
        [
            "fedseg",
            f"{fed_over:.3f}",
            f"{fed_span:.3f}",
            f"{startup:.2f}",
        ]
    ]
    if flower.overhead_s:
        fl_cycle = statistics.median(flower.cycle_overhead_s)
        fl_over = statistics.median(flower.overhead_s)
        rows.append(["Flower 1.42", f"{fl_cycle:.3f}", f"{fl_over:.3f}", f"{flower.startup_s:.2f}"])
        rows.append(
            [
                "ratio Flower / fedseg",
                f"{fl_cycle / max(fed_over, 1e-9):.0f}×",
                f"{fl_over / max(fed_span, 1e-9):.0f}×",
                f"{flower.startup_s / max(startup, 1e-9):.1f}×",
            ]
        )
    lines += [
        markdown_table(
            [
                "system",
                "overhead / round, close to close (s, median of rounds 2+)",
                "overhead / round, open to close (s)",
                "start-up to round 1 (s)",
            ],
            rows,
        ),
        "",
        f"Flower: {flower.note or 'run in this benchmark'}.",
        "",
        f"fedseg start-up, seconds after launching the first process: aggregator healthy "
        f"{run.t_healthy - run.t_launch:.2f}, sites registered and {setting.clients} agents "
        "enrolled "
        f"{run.t_enrolled - run.t_launch:.2f} (the experiment was created meanwhile), started "
        f"{run.t_started - run.t_launch:.2f}, round 1 open {startup:.2f}, first training "
        f"{_first_training(figures) - run.t_launch:.2f}.",
        "",
        cpu_lines(run, setting.rounds),
        "",
        "## fedseg per round",
        "",
        markdown_table(
            [
                "round",
                "cycle s",
                "slowest train+val s",
                "overhead s",
                "close latency ms",
                "aggregate ms",
                "download ms (max)",
                "encode ms (max)",
                "upload ms (max)",
            ],
            [
                [
                    f.number,
                    f"{f.cycle_s:.3f}",
                    f"{f.critical_s:.3f}",
                    f"{f.overhead_s:.3f}",
                    _ms(f.close_latency_s),
                    _ms(f.aggregate_s),
                    _ms(f.max_phase("download")),
                    _ms(f.max_phase("encode")),
                    _ms(f.max_phase("upload")),
                ]
                for f in figures
            ],
        ),
        "",
        f"![Gantt chart of every round]({gantt.name})",
        "",
        f"Total benchmark time: {seconds_str(total)}.",
    ]
    if flower.overhead_s:
        lines[-3:-3] = [
            "## Flower per round",
            "",
            markdown_table(
                ["round", "overhead s (round − T)", "overhead s (close to close)"],
                [
                    [i + 1, f"{o:.2f}", f"{c:.2f}"]
                    for i, (o, c) in enumerate(
                        zip(flower.overhead_s, flower.cycle_overhead_s, strict=False)
                    )
                ],
            ),
            "",
        ]
    return "\n".join(lines)


def _first_training(figures: list[RoundFigures]) -> float:
    starts = [s.phases["train"][0] for s in figures[0].sites if "train" in s.phases]
    return min(starts) if starts else float("nan")


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{1000 * seconds:.0f}"


if __name__ == "__main__":
    main()
