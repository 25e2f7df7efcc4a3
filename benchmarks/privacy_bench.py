"""Privacy cost on five ACDC hospitals: Dice against ε for client-level DP, and the cost of secure
aggregation against plain FedAvg with 5 and 20 sites (issue 21).

``python -m benchmarks.privacy_bench [--quick]`` writes ``benchmarks/results/privacy.md``.

Dice: the same FedAvg experiment as ``compression_bench`` (8 rounds × 12 local Adam steps, every
hospital every round) through ``deploy.launcher.simulation.run_simulation``, without privacy and with
central DP-FedAvg at several budgets. The clip norm ``C`` is set from the non-private run: the
median over rounds of the norm of the averaged update ``θ_r − θ_(r−1)``; individual site updates
are larger, so most get clipped (Andrew et al.'s median target, fixed instead of adaptive). The
noise multiplier for each ε is the smallest that keeps the 8 rounds within it
(``data_specs.privacy.accountant.noise_for_budget``, δ = 1e-5, q = 1).

Secure aggregation: ``benchmarks.privacy_cost`` times one round's protocol work on the real
model size, per site and on the server, and counts the bytes of every message.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.acdc_common import (
    ACDC_SPEC,
    HOSPITALS,
    RESULTS,
    EvalSets,
    acdc_sites,
    command_line,
    fmt,
    fresh_dir,
    mean_or_none,
    parse_args,
    round_models,
    seconds_str,
    simulation_dice,
)
from benchmarks.privacy_cost import RoundCost, median_cost, plain_round, secagg_round

NAME = "privacy_bench"
REPORT = RESULTS / "privacy.md"
DELTA = 1e-5
EPSILONS = (8.0, 64.0, 1000.0)
CLIP_ONLY_Z = 1e-3  # "clipping only": noise far below any useful guarantee


@dataclass(frozen=True)
class Setting:
    rounds: int
    max_steps: int
    hospitals: tuple[str, ...] = HOSPITALS
    batch_size: int = 8
    lr: float = 3e-3
    test_frac: float = 0.25
    repeats: int = 3


FULL = Setting(rounds=8, max_steps=12)
QUICK = Setting(rounds=2, max_steps=2, hospitals=HOSPITALS[:2], test_frac=0.05, repeats=1)


@dataclass
class DiceRun:
    label: str
    epsilon: float | None
    noise_multiplier: float | None
    clip_norm: float | None
    dice: dict[str, float | None]
    rounds: int
    seconds: float

    @property
    def mean(self) -> float | None:
        return mean_or_none(self.dice.values())


def _own_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """This benchmark's own options; the rest go to the common ``parse_args``."""
    parser = argparse.ArgumentParser(prog="", add_help=False)
    parser.add_argument("--rounds", type=int, help="override the setting's rounds")
    parser.add_argument("--steps", type=int, help="override the local Adam steps per round")
    parser.add_argument("--test-frac", type=float, help="override the test share per hospital")
    parser.add_argument("--repeats", type=int, help="override the secure-aggregation repeats")
    parser.add_argument(
        "--epsilons", help="comma-separated ε budgets, in run order. Default: 8,64,1000"
    )
    args = sys.argv[1:] if argv is None else argv
    if "-h" in args or "--help" in args:  # the common options' help follows
        print(parser.format_help().replace("usage:", "this benchmark's own options:", 1))
    return parser.parse_known_args(args)


def _setting(own: argparse.Namespace, quick: bool) -> Setting:
    base = QUICK if quick else FULL
    changes = {
        name: value
        for name, value in (
            ("rounds", own.rounds),
            ("max_steps", own.steps),
            ("test_frac", own.test_frac),
            ("repeats", own.repeats),
        )
        if value is not None
    }
    return replace(base, **changes)


def main(argv: list[str] | None = None) -> None:
    own, rest = _own_args(argv)
    args = parse_args(NAME, __doc__, rest)
    setting = _setting(own, args.quick)
    epsilons = (
        EPSILONS if own.epsilons is None else tuple(float(e) for e in own.epsilons.split(","))
    )
    started = time.monotonic()
    work = fresh_dir(args.work_dir)
    sites = acdc_sites(
        args.acdc_dir, work / "manifests", seed=args.seed, test_frac=setting.test_frac
    )
    manifests = {h: p for h, p in sites.by_name().items() if h in setting.hospitals}
    evals = EvalSets(manifests, ACDC_SPEC)
    base = _run(
        "run_plain", "no DP (FedAvg)", None, None, None, manifests, evals, setting, work, args.seed
    )
    clip = _clip_norm(base.extra)
    runs = [base.run]
    print(f"no DP: Dice {fmt(base.run.mean)}; clip norm C = {clip:.4f}", flush=True)
    from data_specs.privacy.accountant import noise_for_budget

    q = 1.0
    # ε = 8 first (the figure), "clipping only" after it, then the weaker budgets
    todo: list[tuple[str, float | None, float]] = [
        (f"DP ε = {e:g}", e, noise_for_budget(q, setting.rounds, DELTA, e)) for e in epsilons
    ]
    todo.insert(min(1, len(todo)), ("clipping only (no guarantee)", None, CLIP_ONLY_Z))
    for i, (label, eps, z) in enumerate(todo):
        out = _run(f"run_dp_{i}", label, eps, z, clip, manifests, evals, setting, work, args.seed)
        runs.append(out.run)
        print(f"{label}: z={z:.3f}, Dice {fmt(out.run.mean)}, {out.run.rounds} rounds", flush=True)
        _save(work, runs, [])
    costs = _secagg_costs(setting)
    for c in costs:
        print(f"{c.label} n={c.sites}: site {c.site_s:.3f} s, server {c.server_s:.3f} s")
    total = time.monotonic() - started
    _save(work, runs, costs)
    from deploy.launcher.report import write_report

    per_site = base.round_seconds / len(manifests)
    text = _report(runs, costs, per_site, setting, sites, evals, total, command_line(NAME, argv))
    write_report(REPORT, text)
    print(f"report written to {REPORT} ({seconds_str(total)})")


def _save(work: Path, runs: list[DiceRun], costs: list[RoundCost]) -> None:
    """What is measured so far (a run cut short keeps its finished settings)."""
    payload = {"dice": [asdict(r) for r in runs], "secagg": [asdict(c) for c in costs]}
    (work / "results.json").write_text(json.dumps(payload, indent=2))


@dataclass
class _Outcome:
    run: DiceRun
    extra: dict[int, Path]
    round_seconds: float


def _run(
    out: str,
    label: str,
    eps: float | None,
    z: float | None,
    clip: float | None,
    manifests: dict[str, Path],
    evals: EvalSets,
    setting: Setting,
    work: Path,
    seed: int,
) -> _Outcome:
    from data_specs.privacy import DPConfig, PrivacyConfig
    from deploy.launcher.simulation import SimulationConfig, run_simulation

    privacy = None
    if z is not None and clip is not None:
        privacy = PrivacyConfig(
            dp=DPConfig(clip_norm=clip, noise_multiplier=z, delta=DELTA, epsilon_budget=eps)
        )
    cfg = SimulationConfig(
        manifests=list(manifests.values()),
        out_dir=work / out,
        spec=ACDC_SPEC,
        rounds=setting.rounds,
        max_steps=setting.max_steps,
        local_epochs=1,
        batch_size=setting.batch_size,
        lr=setting.lr,
        optimizer="adam",
        seed=seed,
        evaluate=False,
        privacy=privacy,
    )
    res = run_simulation(cfg)
    if res.status != "completed":
        raise SystemExit(f"{label}: experiment {res.experiment_id} ended {res.status}")
    closed = [r for r in res.rounds if r["status"] == "closed"]
    t = time.monotonic()
    dice, _ = simulation_dice(res, list(manifests), evals, personal=False)
    spent = closed[-1].get("privacy") if closed else None
    run = DiceRun(
        label=label,
        epsilon=None if spent is None or eps is None else spent["epsilon_total"],
        noise_multiplier=z,
        clip_norm=clip,
        dice=dice,
        rounds=len(closed),
        seconds=res.seconds + time.monotonic() - t,
    )
    return _Outcome(run, round_models(res), res.seconds / max(len(closed), 1))


def _clip_norm(models: dict[int, Path]) -> float:
    """Median norm of the averaged update over rounds, without the batch-norm running
    statistics (under DP they stay at the sites, outside the clipped update)."""
    from data_specs.weights.bundle import decode_bundle
    from data_specs.weights.unet_layout import statistic_keys_of

    stats = set(statistic_keys_of(ACDC_SPEC))
    states = {r: decode_bundle(p.read_bytes()).tensors for r, p in sorted(models.items())}
    norms = []
    for r in sorted(states)[1:]:
        a, b = states[r], states[r - 1]
        sq = sum(
            float(np.sum((a[k].astype(np.float64) - b[k]) ** 2))
            for k in a
            if a[k].dtype.kind == "f" and k not in stats
        )
        norms.append(math.sqrt(sq))
    return float(np.median(norms)) if norms else 1.0


def _secagg_costs(setting: Setting) -> list[RoundCost]:
    from data_specs.task_spec import expected_tensors

    tensors = {
        k: tuple(s) for k, (s, d) in expected_tensors(ACDC_SPEC).items() if d.startswith("float")
    }
    size = sum(math.prod(s) for s in tensors.values())
    reps = setting.repeats
    out = []
    for n in (5, 20):
        out.append(median_cost([plain_round(tensors, n, seed=i) for i in range(reps)]))
        t = n // 2 + 1
        for drop in (0, 1):
            out.append(
                median_cost(
                    [
                        secagg_round(size, n, neighbours=None, threshold=t, drop=drop, seed=i)
                        for i in range(reps)
                    ]
                )
            )
        if n == 20:
            out.append(
                median_cost(
                    [
                        secagg_round(size, n, neighbours=6, threshold=4, drop=1, seed=i)
                        for i in range(reps)
                    ]
                )
            )
    return out


def _report(
    runs: list[DiceRun],
    costs: list[RoundCost],
    site_round_s: float,
    setting: Setting,
    sites: Any,
    evals: EvalSets,
    total: float,
    cmd: str,
) -> str:
    from benchmarks.privacy_report import report_text

    return report_text(runs, costs, site_round_s, setting, sites, evals, total, cmd)


if __name__ == "__main__":
    main()
