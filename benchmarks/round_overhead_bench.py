"""Round overhead of a real local federation: the share of a round not spent in local training (issue 5).

``python -m benchmarks.round_overhead_bench [--quick]`` writes
``benchmarks/results/round_overhead.md`` and ``round_overhead.png``.

The aggregator (``fedseg aggregator serve``) and five site agents (``fedseg site run``, one per
ACDC hospital) run as separate processes on 127.0.0.1 over real HTTP, started and always
stopped by ``deploy.launcher.processes`` as ``fedseg demo`` does. A FedAvg experiment runs a few rounds,
once with one torch thread per agent (``OMP_NUM_THREADS=1`` in the agents' environment) and
once with torch's default threads. The rounds API gives each round's open and close times and
each site's ``train_seconds`` (the agent's local training, ``SiteTrainer.train_round``:
optimiser steps and the personal-model update, not the validation that follows).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.acdc_common import (
    ACDC_SPEC,
    HOSPITALS,
    RESULTS,
    acdc_sites,
    command_line,
    fresh_dir,
    parse_args,
    seconds_str,
)

NAME = "round_overhead_bench"
REPORT = RESULTS / "round_overhead.md"
PLOT = RESULTS / "round_overhead.png"


@dataclass(frozen=True)
class Setting:
    rounds: int  # with one torch thread per agent
    default_rounds: int  # with torch's default threads per agent (slow: oversubscribed)
    max_steps: int
    hospitals: tuple[str, ...] = HOSPITALS
    batch_size: int = 8
    lr: float = 3e-3
    poll_wait_s: int = 5


FULL = Setting(rounds=8, default_rounds=3, max_steps=20)
QUICK = Setting(rounds=2, default_rounds=2, max_steps=2, hospitals=HOSPITALS[:2])


@dataclass(frozen=True)
class ThreadConfig:
    """How many CPU threads each agent's torch may use (environment of the agent processes)."""

    key: str
    label: str
    env: dict[str, str]


ONE_THREAD = ThreadConfig(
    "one_thread",
    "1 torch thread per agent (`OMP_NUM_THREADS=1`)",
    {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
)
DEFAULT_THREADS = ThreadConfig("default_threads", "torch's default threads per agent", {})


@dataclass
class Federation:
    """One run of the local federation under one thread configuration."""

    config: ThreadConfig
    rounds: list[RoundTiming]
    launch_s: float
    run_s: float

    @property
    def later(self) -> list[RoundTiming]:
        """Rounds after the first (round 1 includes each agent's first build and data load)."""
        return self.rounds[1:] or self.rounds


@dataclass
class RoundTiming:
    number: int
    wall_s: float
    train_s: dict[str, float]
    bytes_up: int
    bytes_down: int

    @property
    def overhead_max(self) -> float:
        """1 − (slowest site's training) / (round wall time)."""
        return 1 - max(self.train_s.values()) / self.wall_s

    @property
    def overhead_mean(self) -> float:
        """1 − (mean site training) / (round wall time)."""
        return 1 - statistics.fmean(self.train_s.values()) / self.wall_s


def main(argv: list[str] | None = None) -> None:
    args = parse_args(NAME, __doc__, argv)
    setting = QUICK if args.quick else FULL
    started = time.monotonic()
    work = fresh_dir(args.work_dir)
    # The product's default split (with validation): each round ends with the agent's
    # validation pass, as in a deployment.
    sites = acdc_sites(args.acdc_dir, work / "manifests", seed=args.seed, val_frac=0.2)
    manifests = {h: p for h, p in sites.by_name().items() if h in setting.hospitals}
    runs = []
    for config, rounds in ((ONE_THREAD, setting.rounds), (DEFAULT_THREADS, setting.default_rounds)):
        fed = _federation(manifests, setting, rounds, config, args.seed, work / config.key)
        runs.append(fed)
        print(
            f"{config.label}: overhead (slowest) "
            f"{100 * statistics.fmean(r.overhead_max for r in fed.later):.0f} %, "
            f"(mean) {100 * statistics.fmean(r.overhead_mean for r in fed.later):.0f} %"
        )
    total = time.monotonic() - started
    (work / "runs.json").write_text(
        json.dumps(
            [{"config": f.config.key, "rounds": [r.__dict__ for r in f.rounds]} for f in runs],
            indent=2,
        )
    )
    _plot(runs)
    from deploy.launcher.report import write_report

    write_report(REPORT, _report(runs, setting, total, command_line(NAME, argv)))
    print(f"report written to {REPORT} and {PLOT} ({seconds_str(total)})")


def _federation(
    manifests: dict[str, Path],
    setting: Setting,
    n_rounds: int,
    config: ThreadConfig,
    seed: int,
    work: Path,
) -> Federation:
    import httpx

    from data_specs.constants import OptimizerName, PersonalizationMethod
    from data_specs.researcher.experiments import ExperimentCreate
    from data_specs.wire import PersonalizationConfig, TrainConfig
    from deploy.console.researcher_client import ResearcherClient
    from deploy.launcher.local_aggregator import start_aggregator
    from deploy.launcher.processes import LaunchError, fedseg_argv, process_group

    t0 = time.monotonic()
    with process_group(work / "logs") as group, httpx.Client(timeout=60) as http:
        agg = start_aggregator(group, work / "aggregator", log_level="WARNING")
        url, admin = agg.url, agg.admin_token
        http.base_url = httpx.URL(url)
        researcher = ResearcherClient(http)
        researcher.create_researcher(admin, "round-overhead-bench")
        ids = {}
        for name, manifest in manifests.items():
            reg = researcher.register_site(name)
            ids[name] = reg.id
            group.start(
                name,
                fedseg_argv("site", "run", "--log-level", "WARNING"),
                env={
                    "FEDSEG_SITE_AGGREGATOR_URL": url,
                    "FEDSEG_SITE_MANIFEST": str(manifest),
                    "FEDSEG_SITE_WORK_DIR": str(work / "sites" / name),
                    "FEDSEG_SITE_ALLOW_INSECURE_HTTP": "true",  # loopback only
                    "FEDSEG_SITE_DEVICE": "cpu",
                    "FEDSEG_SITE_POLL_WAIT_S": str(setting.poll_wait_s),
                    "FEDSEG_SITE_ENROLLMENT_TOKEN": reg.enrollment_token,
                    "FEDSEG_SITE_ACCEPT_EXPERIMENTS": '["*"]',
                    **config.env,
                },
            )
        deadline = time.monotonic() + 300
        while {s.id for s in researcher.sites() if s.status == "enrolled"} < set(ids.values()):
            group.check_alive()
            if time.monotonic() > deadline:
                raise LaunchError("site agents did not enroll within 300 s (see the logs)")
            time.sleep(0.3)
        launch_s = time.monotonic() - t0
        exp = researcher.create_experiment(
            ExperimentCreate(
                name="round-overhead",
                spec=ACDC_SPEC,
                rounds=n_rounds,
                fraction=1.0,
                min_sites=len(ids),
                sites=list(ids.values()),
                train=TrainConfig(
                    local_epochs=1,
                    batch_size=setting.batch_size,
                    lr=setting.lr,
                    optimizer=OptimizerName.ADAM,
                    max_steps=setting.max_steps,
                    personalization=PersonalizationConfig(method=PersonalizationMethod.NONE),
                ),
                round_deadline_s=1800,
                seed=seed,
            )
        )
        t1 = time.monotonic()
        researcher.start(exp.id)
        final = researcher.wait_finished(exp.id, timeout_s=3600, poll_s=0.5)
        run_s = time.monotonic() - t1
        group.check_alive(["aggregator"])
        if final.status != "completed":
            raise LaunchError(f"experiment {final.status}: {final.failure_reason}")
        rounds = []
        for r in researcher.rounds(exp.id):
            if r.status != "closed" or r.closed_at is None:
                continue
            train = {
                s.site_name: s.metrics.train_seconds
                for s in r.sites
                if s.status == "accepted" and s.metrics and s.metrics.train_seconds is not None
            }
            rounds.append(
                RoundTiming(
                    number=r.number,
                    wall_s=(r.closed_at - r.opened_at).total_seconds(),
                    train_s=train,
                    bytes_up=sum(s.bytes_up for s in r.sites),
                    bytes_down=sum(s.bytes_down for s in r.sites),
                )
            )
    return Federation(config, rounds, launch_s, run_s)


def _plot(runs: list[Federation]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), dpi=110, squeeze=False)
    for ax, fed in zip(axes[0], runs, strict=True):
        xs = [r.number for r in fed.rounds]
        ax.bar(xs, [r.wall_s for r in fed.rounds], color="lightgray", label="round wall time")
        ax.plot(xs, [max(r.train_s.values()) for r in fed.rounds], "o-", label="slowest training")
        ax.plot(
            xs,
            [statistics.fmean(r.train_s.values()) for r in fed.rounds],
            "s-",
            label="mean training",
        )
        ax.set_xlabel("round")
        ax.set_ylabel("seconds")
        ax.set_title(fed.config.label.replace("`", ""), fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, bbox_inches="tight")
    plt.close(fig)


def _table(fed: Federation) -> str:
    from deploy.launcher.report import markdown_table

    names = list(fed.rounds[0].train_s)
    rows = [
        [
            r.number,
            f"{r.wall_s:.1f}",
            *(f"{r.train_s.get(n, float('nan')):.1f}" for n in names),
            f"{100 * r.overhead_max:.0f} %",
            f"{100 * r.overhead_mean:.0f} %",
            f"{(r.bytes_up + r.bytes_down) / 1e6:.1f}",
        ]
        for r in fed.rounds
    ]
    header = [
        "round",
        "wall s",
        *(f"train s {n}" for n in names),
        "overhead (slowest)",
        "overhead (mean)",
        "MB moved",
    ]
    return markdown_table(header, rows)


def _summary(fed: Federation) -> list[str]:
    later = fed.later
    o_max = statistics.fmean(r.overhead_max for r in later)
    o_mean = statistics.fmean(r.overhead_mean for r in later)
    wall = statistics.fmean(r.wall_s for r in later)
    slowest = statistics.fmean(max(r.train_s.values()) for r in later)
    summed = statistics.fmean(sum(r.train_s.values()) for r in later)
    return [
        f"- **{fed.config.label}**, rounds {later[0].number}–{later[-1].number}: overhead "
        f"(slowest) **{100 * o_max:.0f} %**, overhead (mean) **{100 * o_mean:.0f} %**; mean "
        f"round {wall:.1f} s, slowest site's training {slowest:.1f} s, all sites' training "
        f"summed {summed:.1f} s ({wall - slowest:.1f} s of each round outside the slowest "
        f"training). Start-up {seconds_str(fed.launch_s)}, experiment "
        f"{seconds_str(fed.run_s)}.",
    ]


def _report(runs: list[Federation], setting: Setting, total: float, cmd: str) -> str:
    import os

    from deploy.launcher.report import report_header

    names = list(runs[0].rounds[0].train_s)
    cores = os.cpu_count() or 0
    one, default = runs[0], runs[1]
    slow = statistics.fmean(max(r.train_s.values()) for r in default.later) / max(
        statistics.fmean(max(r.train_s.values()) for r in one.later), 1e-9
    )
    lines = [
        report_header("Round overhead of a local federation (processes over loopback HTTP)", cmd),
        "## Setting",
        "",
        f"- One `fedseg aggregator serve` process and {len(names)} `fedseg site run` processes "
        f"(ACDC hospitals {', '.join(names)}), real HTTP on 127.0.0.1, SQLite, the "
        "aggregator's default orchestrator tick (1 s); sites long-poll with "
        f"`poll_wait_s={setting.poll_wait_s}`; started and stopped by `deploy.launcher.processes` as "
        "`fedseg demo` does.",
        f"- FedAvg, all sites every round, {setting.max_steps} local Adam steps per round "
        f"(batch {setting.batch_size}, 128×128 ACDC slices, U-Net channels "
        f"{ACDC_SPEC.channels}, 0.83 MB of float32 weights each way per site and round).",
        "- Split as the product's default (20 % validation patients): each site's round is "
        "download → load its data → train → validate → upload.",
        f"- **All {len(names) + 1} processes share this machine's {cores} CPU cores.** Two "
        f"thread set-ups: (a) {ONE_THREAD.label}, {one.rounds[-1].number} rounds; (b) "
        f"{DEFAULT_THREADS.label} ({cores} each, so {len(names) * cores} compute threads on "
        f"{cores} cores), {default.rounds[-1].number} rounds (slow, so fewer).",
        "",
        "Definitions, per round: wall = round `closed_at − opened_at` from the rounds API; "
        "train_i = site i's `train_seconds` metric (`SiteTrainer.train_round`: the optimiser "
        "steps and the personal-model update; not the download, data loading, validation or "
        "upload);",
        "",
        "- **overhead (slowest)** = 1 − max_i train_i / wall: the share of the round during "
        "which not even the slowest site was training (download, data loading, validation, "
        "upload, aggregation, the orchestrator's tick, waiting);",
        "- **overhead (mean)** = 1 − mean_i train_i / wall: the share of the round an average "
        "site spent not training (includes waiting for slower sites).",
        "",
        "Since the sites train concurrently on shared cores, `train_seconds` is contended wall "
        "time, not the time one site would need alone.",
        "",
        "## Summary",
        "",
        *_summary(one),
        *_summary(default),
        f"- With torch's default threads the slowest site's training takes {slow:.1f}× as "
        "long as with one thread per agent for the same steps: the agents' OpenMP threads "
        "oversubscribe the cores and spin. `fedseg demo` sets `OMP_NUM_THREADS` for its "
        "agents (cores / 2 each); `fedseg site run` itself has no thread setting, so anyone "
        "co-locating agents (a test bed, a small hospital server running two experiments) "
        "has to set it in the environment as this benchmark's set-up (a) does.",
        "",
        f"## (a) {ONE_THREAD.label}",
        "",
        _table(one),
        "",
        f"## (b) {DEFAULT_THREADS.label}",
        "",
        _table(default),
        "",
        f"![round timing]({PLOT.name})",
        "",
        f"Total benchmark time: {seconds_str(total)}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
