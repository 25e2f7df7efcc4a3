"""The outside table's report, and the reference script's rows, from the stored runs."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.acdc_common import HOSPITALS, RESULTS
from benchmarks.outside_methods import METHODS

OUTSIDE_REPORT = RESULTS / "suite_outside.md"
OUTSIDE_PLOT = RESULTS / "suite_outside_dice.png"


def _fmt(v: float | None, d: int = 3) -> str:
    return "—" if v is None else f"{v:.{d}f}"


def _newest_per_fold(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per held-out hospital: its runs at the fold's newest configuration (every seed)."""
    by: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    newest: dict[str, tuple[str, str]] = {}
    for r in runs:
        h, cfg_hash = r["held_out"], r["config_hash"]
        by[h][cfg_hash].append(r)
        if h not in newest or r["date"] > newest[h][0]:
            newest[h] = (r["date"], cfg_hash)
    return {
        h: sorted(by[h][c], key=lambda r: r["seed"])
        for h in HOSPITALS
        if h in newest
        for c in [newest[h][1]]
    }


def outside_markdown(runs: list[dict[str, Any]]) -> str:
    """The outside report: every method per held-out hospital, the safeguard, the verdicts."""
    folds = _newest_per_fold(runs)
    mean_of: dict[str, dict[str, float]] = {
        h: {m: statistics.fmean(r["models"][m]["dice"] for r in rs) for m in METHODS}
        for h, rs in folds.items()
    }
    first = next(iter(folds.values()))[0]
    cfg = first["config"]
    seeds = sorted({r["seed"] for rs in folds.values() for r in rs})
    lines = [
        "# Outside hospitals on ACDC: leave one hospital out, the accumulated suite",
        "",
        "Assembled by `python -m benchmarks.suite report` from every run stored in "
        "`benchmarks/results/runs/outside/` (one JSON per held-out hospital and seed); runs "
        "with `python -m benchmarks.suite run --table outside`.",
        "",
        f"- Federation per fold: the other four hospitals, the inside table's recipe and split "
        f"({cfg['rounds']} rounds, one local epoch each), IOP-FL inside personalisation (alpha "
        f"{cfg['params']['alpha']}), every site shares its personal model.",
        "- The held-out hospital enrolls as an outside site and runs `fedseg site adapt`'s "
        "code on its test scans without labels (at most "
        f"{cfg['params']['adapt_steps']} steps, lr {cfg['params']['adapt_lr']}); Dice is "
        "computed afterwards, 3D per test volume in the scan's own geometry, mean of RV, MYO, "
        "LV (as `fedseg site evaluate`).",
        "- Methods: global; best single expert picked label-free; output average of every "
        "expert; TENT on the global model; routed (softmax and sigmoid gates); safeguard = what "
        "`fedseg site adapt` hands the site (routed, or its label-free fallback).",
        f"- Seeds: {', '.join(map(str, seeds))}.",
        *_rescored_line(folds),
        "",
        "## Test Dice at the held-out hospital (mean over seeds)",
        "",
        "| held-out | " + " | ".join(METHODS) + " | safeguard's choice | seeds |",
        "|---|" + "---|" * (len(METHODS) + 2),
    ]
    for h, rs in folds.items():
        choices = ", ".join(f"{r['choice']} ({r['choice_bn']} BN)" for r in rs)
        lines.append(
            f"| {h} | "
            + " | ".join(_fmt(mean_of[h][m]) for m in METHODS)
            + f" | {choices} | {','.join(str(r['seed']) for r in rs)} |"
        )
    means = {m: statistics.fmean(mean_of[h][m] for h in folds) for m in METHODS}
    lines.append("| mean | " + " | ".join(_fmt(means[m]) for m in METHODS) + " | | |")
    lines += ["", f"![held-out Dice]({OUTSIDE_PLOT.name})"]
    lines += ["", "What `fedseg site adapt` said (per fold, first seed):", ""]
    lines += [f"- {h}: {rs[0]['message']}" for h, rs in folds.items()]
    lines += ["", *_outside_verdicts(mean_of, means, len(folds)), ""]
    lines += _timing(folds)
    return "\n".join(lines) + "\n"


def _rescored_line(folds: dict[str, list[dict[str, Any]]]) -> list[str]:
    rescored = sorted(
        {
            f"{r['rescored']['commit'][:12]} ({r['rescored']['date']})"
            for rs in folds.values()
            for r in rs
            if "rescored" in r
        }
    )
    if not rescored:
        return []
    return [
        "- The outside methods of these folds were scored again (`python -m benchmarks.suite "
        f"rescore`) at commit {', '.join(rescored)}, from the routing bundles the runs left "
        "behind: the federations are the original runs', the adaptation and the choice are "
        "today's code's."
    ]


def plot_outside(runs: list[dict[str, Any]]) -> None:
    """Bars of every method's Dice per held-out hospital (mean over seeds) and their mean."""
    from deploy.launcher.report import plot_grouped_bars

    folds = _newest_per_fold(runs)
    table = {
        h: {m: statistics.fmean(r["models"][m]["dice"] for r in rs) for m in METHODS}
        for h, rs in folds.items()
    }
    table["mean"] = {m: statistics.fmean(v[m] for v in table.values()) for m in METHODS}
    plot_grouped_bars(table, OUTSIDE_PLOT, title="ACDC held-out hospital: test Dice (3D)")


def _outside_verdicts(
    mean_of: dict[str, dict[str, float]], means: dict[str, float], n: int
) -> list[str]:
    worst = min(100 * (v["safeguard"] - v["global"]) for v in mean_of.values())
    worst_routed = min(100 * (v["routed softmax"] - v["global"]) for v in mean_of.values())
    routed_gain = 100 * (means["routed softmax"] - means["global"])
    guard_gain = 100 * (means["safeguard"] - means["global"])
    partial = "" if n == len(HOSPITALS) else f" (only {n} of {len(HOSPITALS)} folds stored)"
    return [
        f"## Against the goals{partial}",
        "",
        f"- Safeguard − global, worst held-out hospital: **{worst:+.1f} points** "
        f"(goal ≥ −1: **{'met' if worst >= -1 else 'missed'}**); routed softmax alone: "
        f"{worst_routed:+.1f} points.",
        f"- Routed (softmax) vs TENT, mean: {means['routed softmax']:.3f} vs "
        f"{means['TENT']:.3f} (goal routed ≥ TENT: "
        f"**{'met' if means['routed softmax'] >= means['TENT'] else 'missed'}**).",
        f"- Routed − global, mean: {routed_gain:+.1f} points; safeguard − global: "
        f"{guard_gain:+.1f} points (goal ≥ +3: "
        f"**{'met' if max(routed_gain, guard_gain) >= 3 else 'missed'}**).",
        *_oracle_line(),
    ]


def _oracle_line(path: Path | None = None) -> list[str]:
    """How much room there is, from ``suite_outside_oracle.json`` (labels used; default path)
    if present."""
    import json

    from benchmarks.suite.outside_oracle import FIGURES, REPORT

    path = path or FIGURES
    if not path.exists():
        return []
    figures = json.loads(path.read_text())
    if not figures:
        return []

    def gain(column: str) -> str:
        values = [f[column] - f["global"] for f in figures.values() if column in f]
        return f"{100 * statistics.fmean(values):+.1f}" if values else "—"

    tuned = sorted(
        {c for f in figures.values() for c in f if c.startswith("fine-tuned")},
        key=lambda c: (len(c), c),  # 30 steps before 120 steps
    )
    return [
        f"- ORACLE bounds with labels ([{REPORT.name}]({REPORT.name}), {len(figures)} folds): "
        f"the best bundle model and batch-norm mode per fold "
        f"{gain('best model × BN (labels)')} points over global, per test volume "
        f"{gain('best model × BN per volume (labels)')}; the global model fine-tuned on the "
        "held-out hospital's labelled training patients "
        + ", ".join(
            f"{gain(c)} ({c.removeprefix('fine-tuned ').removesuffix(' (labels)')})" for c in tuned
        )
        + "."
    ]


def _timing(folds: dict[str, list[dict[str, Any]]]) -> list[str]:
    rs = [r for runs in folds.values() for r in runs]
    fed = statistics.fmean(r["federation_seconds"] for r in rs) / 60
    adapt = statistics.fmean(r["adapt_command_seconds"] for r in rs)
    scans = statistics.fmean(r["scans"] for r in rs)
    speed = [r["evaluate_vs_infer"] for r in rs if "evaluate_vs_infer" in r]
    evaluate_line = (
        [
            "- `fedseg site evaluate`'s path against `fedseg site infer`'s on each held-out "
            "hospital's test scans with the trained global model (warm, best of two): "
            + ", ".join(f"{s['ratio']:.2f}×" for s in speed)
            + f" (mean {statistics.fmean(s['ratio'] for s in speed):.2f}×; goal ≤ 3×; "
            f"{speed[0]['volumes']} volumes each)."
        ]
        if speed
        else []
    )
    return [
        "## Time",
        "",
        *evaluate_line,
        f"- Federation per fold: {fed:.1f} min of wall time (mean; the machine was shared, so "
        "only the round counts are fixed).",
        f"- `fedseg site adapt` (download, safe adaptation, save): "
        f"{adapt:.0f} s for {scans:.0f} scans (mean).",
        "",
    ]


def reference_lines(runs: list[dict[str, Any]], fedseg_rows: dict[str, Any]) -> list[str]:
    """The inside report's section on the reference script at the same round budget.

    fedseg's runs on the script's own patients (``fedseg_*`` methods of the reference table)
    sit right under the script's rows; without them, the suite's rows (other test patients).
    """
    if not runs:
        return []
    by = {r["config"]["method"]: r for r in sorted(runs, key=lambda r: r["date"])}
    out = [
        "## Beside the reference script, at the same budget",
        "",
        "`../shared/reference/acdc_reference.py` (the issue's yardstick: a plain MONAI script "
        "with bf16 and channels-last, constant Adam 1e-3, raw intensities, flips and quarter "
        "turns) called by `python -m benchmarks.suite run --table reference` with the suite's "
        "number of rounds or epochs instead of its wall-clock budget. It keeps its own patient "
        "split (numpy `default_rng(0)`, 14/2/4 patients per hospital). The rows marked *same "
        "patients* are fedseg (the suite's recipe, through `fedseg simulate`) trained and scored "
        "on exactly that split (`fedseg_*` methods of the same table); rows marked *suite split* "
        "have other test patients: compare their means, not hospitals.",
        "",
        "| model | " + " | ".join(HOSPITALS) + " | mean | rounds | images/s (train steps) |",
        "|---|" + "---|" * (len(HOSPITALS) + 3),
    ]
    rows = [
        ("reference FedAvg (global)", "ref_fedavg", "global", "FedAvg (global)", "fedavg_iopfl"),
        (
            "reference IOP-FL (personal)",
            "ref_fedavg",
            "personal",
            "IOP-FL (personal)",
            "fedavg_iopfl",
        ),
        ("reference pooled", "ref_central", "global", "centralised (pooled)", "central"),
    ]
    for label, method, kind, ours, inside in rows:
        r = by.get(method)
        if r is not None:
            per = r["models"][kind]
            ips = r.get("images_per_s")
            out.append(
                f"| {label} | "
                + " | ".join(_fmt(per.get(h)) for h in HOSPITALS)
                + f" | {statistics.fmean(per.values()):.3f} | {r['config']['rounds']} | "
                f"{_fmt(ips, 1)} |"
            )
        same = by.get(f"fedseg_{inside}")
        mine = fedseg_rows.get(ours)
        if same is not None and kind in same["models"]:
            dice = {h: v["dice"] for h, v in same["models"][kind].items()}
            out.append(
                f"| fedseg {ours}, same patients | "
                + " | ".join(_fmt(dice.get(h)) for h in HOSPITALS)
                + f" | {statistics.fmean(dice.values()):.3f} | {same['config']['rounds']} | |"
            )
        elif mine and r is not None:
            out.append(
                f"| fedseg {ours}, suite split | "
                + " | ".join(_fmt(mine["per_hospital"].get(h)) for h in HOSPITALS)
                + f" | {mine['mean']:.3f} | {mine['rounds']} | |"
            )
    return [*out, ""]
