"""Reports assembled from every stored run: mean ± sd over seeds, paired differences, curves."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.acdc_common import HOSPITALS, RESULTS
from benchmarks.suite.store import load_runs

INSIDE_REPORT = RESULTS / "suite_inside.md"
INSIDE_CURVES = RESULTS / "suite_inside_curves.png"
ABLATION_REPORT = RESULTS / "suite_ablation.md"

# (row label, method, model kind)
INSIDE_ROWS: list[tuple[str, str, str]] = [
    ("local-only", "local", "global"),
    ("FedAvg (global)", "fedavg_iopfl", "global"),
    ("FedProx (global)", "fedprox", "global"),
    ("FedBN (personal)", "fedbn", "personal"),
    ("Ditto (personal)", "ditto", "personal"),
    ("IOP-FL (personal)", "fedavg_iopfl", "personal"),
    ("centralised (pooled)", "central", "global"),
    ("FedAvg, clipping only (global)", "fedavg_clip", "global"),
    ("FedAvg, client-level DP ε = 1000 (global)", "fedavg_dp1000", "global"),
    ("FedAvg, client-level DP ε = 8 (global)", "fedavg_dp8", "global"),
]
BASELINE = ("fedavg_iopfl", "global")


def bootstrap_ci(
    diffs: list[float], *, reps: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of paired differences.

    Args:
        diffs: per-volume differences (method − baseline), paired by volume.
        reps: bootstrap resamples. Default 2000.
        level: confidence level. Default 0.95.
        seed: generator seed (the interval is reproducible). Default 0.
    """
    arr = np.asarray(diffs, dtype=np.float64)
    if arr.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(reps, arr.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _latest_by_method(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Runs of each method at that method's most recent configuration (all its seeds)."""
    by: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    newest: dict[str, tuple[str, str]] = {}
    for r in runs:
        m, h = r["config"]["method"], r["config_hash"]
        by[m][h].append(r)
        if m not in newest or r["date"] > newest[m][0]:
            newest[m] = (r["date"], h)
    return {m: sorted(by[m][h], key=lambda r: r["seed"]) for m, (_, h) in newest.items()}


def _fmt(v: float | None, d: int = 3) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:.{d}f}"


def inside_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per row: per-hospital means over seeds, overall mean and sd over seeds, seeds used."""
    latest = _latest_by_method(runs)
    rows: dict[str, Any] = {}
    for label, method, kind in INSIDE_ROWS:
        seeds = [r for r in latest.get(method, []) if kind in r["models"]]
        if not seeds:
            continue
        per_h = {
            h: statistics.fmean(r["models"][kind][h]["dice"] for r in seeds)
            for h in HOSPITALS
            if all(h in r["models"][kind] for r in seeds)
        }
        seed_means = [statistics.fmean(r["models"][kind][h]["dice"] for h in per_h) for r in seeds]
        hd = [
            r["models"][kind][h]["hd95"]
            for r in seeds
            for h in per_h
            if r["models"][kind][h]["hd95"] is not None
        ]
        rows[label] = {
            "method": method,
            "kind": kind,
            "per_hospital": per_h,
            "mean": statistics.fmean(seed_means),
            "sd": statistics.stdev(seed_means) if len(seed_means) > 1 else None,
            "seeds": [r["seed"] for r in seeds],
            "hd95": statistics.fmean(hd) if hd else None,
            "rounds": seeds[0]["config"]["rounds"],
            "wall_min": statistics.fmean(r["wall_seconds"] for r in seeds) / 60,
            "commit": seeds[-1]["commit"],
        }
    return {"rows": rows, "latest": latest}


def paired_differences(
    latest: dict[str, list[dict[str, Any]]], method: str, kind: str
) -> dict[str, tuple[float, float, float, int]]:
    """Per hospital: mean difference to FedAvg over paired test volumes (all shared seeds),
    with its 95 % bootstrap interval and the number of pairs."""
    base_m, base_k = BASELINE
    base = {r["seed"]: r for r in latest.get(base_m, [])}
    out = {}
    for h in HOSPITALS:
        diffs: list[float] = []
        for r in latest.get(method, []):
            b = base.get(r["seed"])
            if b is None or h not in r["models"].get(kind, {}) or h not in b["models"][base_k]:
                continue
            mine, theirs = r["models"][kind][h]["case_dice"], b["models"][base_k][h]["case_dice"]
            diffs += [a - c for a, c in zip(mine, theirs, strict=True)]
        if diffs:
            lo, hi = bootstrap_ci(diffs)
            out[h] = (float(np.mean(diffs)), lo, hi, len(diffs))
    return out


def inside_markdown(
    runs: list[dict[str, Any]], reference: list[dict[str, Any]] | None = None
) -> str:
    """The inside report's text (with the reference script's rows when ``reference`` has runs)."""
    from benchmarks.suite.outside_report import reference_lines
    from benchmarks.suite.recipe import ACDC_RECIPE_SPEC, RECIPE_TRAIN
    from benchmarks.suite.why import why_lines

    summary = inside_summary(runs)
    rows, latest = summary["rows"], summary["latest"]
    lines = [
        "# Inside personalisation on ACDC: the accumulated suite",
        "",
        "Assembled by `python -m benchmarks.suite report` from every run stored in "
        "`benchmarks/results/runs/inside/` (one JSON per method, seed and configuration, with "
        "its commit). Five hospitals = ACDC diagnosis groups, split by patient (seeded by the run "
        "seed): 14 training, 2 validation and 4 test patients each (ED + ES frames: 8 test "
        "volumes per hospital).",
        "",
        f"- Recipe: U-Net channels {ACDC_RECIPE_SPEC.channels}, {ACDC_RECIPE_SPEC.num_res_units} "
        "residual units, batch norm; each slice resized to 128² (area), per-volume z-score; "
        f"DiceCE; {RECIPE_TRAIN['optimizer']} lr {RECIPE_TRAIN['lr']} with a poly schedule over "
        f"the whole federation, batch {RECIPE_TRAIN['batch_size']}, one local epoch per round, "
        "optimiser state kept on each site across rounds; bf16 autocast and channels-last on "
        "this CPU; flips, quarter turns and ±10 % intensity jitter per sample.",
        "- Budget: a fixed number of rounds (one epoch of each site's data per round), chosen "
        "to fit about 12 minutes of this idle 2-core CPU for a federated run; centralised "
        "trains the pooled data for the same number of epochs (equal compute); local-only "
        "trains each hospital alone for the same epochs.",
        "- Dice: 3D per test volume in the scan's own geometry (prediction resized back to the "
        "original slice size, as `fedseg site evaluate` does), mean of RV, MYO, LV; averaged "
        "per hospital. HD95 in voxels (the ACDC files carry no spacing).",
        "",
        "## Test Dice per hospital (mean over seeds)",
        "",
        "| model | " + " | ".join(HOSPITALS) + " | mean ± sd over seeds | seeds | HD95 | rounds | "
        "wall min/run |",
        "|---|" + "---|" * (len(HOSPITALS) + 5),
    ]
    for label, row in rows.items():
        sd = f" ± {row['sd']:.3f}" if row["sd"] is not None else " (1 seed)"
        cells = [_fmt(row["per_hospital"].get(h)) for h in HOSPITALS]
        lines.append(
            f"| {label} | " + " | ".join(cells) + f" | {row['mean']:.3f}{sd} | "
            f"{','.join(map(str, row['seeds']))} | {_fmt(row['hd95'], 1)} | {row['rounds']} | "
            f"{row['wall_min']:.1f} |"
        )
    lines += ["", f"![learning curves]({INSIDE_CURVES.name})", ""]
    lines += reference_lines(reference or [], rows)
    lines += _paired_section(rows, latest)
    lines += _verdicts(rows)
    lines += privacy_lines(latest)
    lines += why_lines(rows, latest, reference or [], load_runs("ablation"))
    return "\n".join(lines) + "\n"


def _paired_section(rows: dict[str, Any], latest: dict[str, list[dict[str, Any]]]) -> list[str]:
    out = [
        "## Paired differences against FedAvg (global)",
        "",
        "Mean Dice difference over the same test volumes (all seeds both have), with a 95 % "
        "percentile bootstrap interval over volumes; an interval that contains 0 is no "
        "evidence either way.",
        "",
        "| model | " + " | ".join(HOSPITALS) + " |",
        "|---|" + "---|" * len(HOSPITALS),
    ]
    for label, row in rows.items():
        if (row["method"], row["kind"]) == BASELINE:
            continue
        diffs = paired_differences(latest, row["method"], row["kind"])
        cells = [
            f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]" if (d := diffs.get(h)) else "—"
            for h in HOSPITALS
        ]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return [*out, ""]


def privacy_lines(latest: dict[str, list[dict[str, Any]]]) -> list[str]:
    """What the rounds API reported for the DP rows' last round (ε, δ, z, the adaptive C)."""
    out = []
    for label, method, _ in INSIDE_ROWS:
        for r in latest.get(method, []):
            p = r.get("privacy")
            if not p:
                continue
            eps = "—" if p.get("epsilon_total") is None else f"{p['epsilon_total']:.2f}"
            out.append(
                f"- {label}, seed {r['seed']}: ε = {eps} (δ = {p['delta']:g}) after "
                f"{r['config']['rounds']} rounds, noise multiplier z = {p['noise_multiplier']:.3f}, "
                f"last round's clip norm C = {p['clip_norm']:.3f} (adaptive, median target); every "
                "hospital every round (q = 1), central noise on the sum of 5 clipped updates."
            )
    if not out:
        return []
    return ["## Client-level differential privacy", "", *out, ""]


def _verdicts(rows: dict[str, Any]) -> list[str]:
    out = [
        "## Against the goals",
        "",
        "Rows are compared as they stand, each as the mean over its own seeds; where rows have "
        "different seed sets, the paired table above (same seeds only) is the like-for-like "
        "comparison, and the sd column shows how far one seed moves a row.",
        "",
    ]
    fed = rows.get("FedAvg (global)")
    cen = rows.get("centralised (pooled)")
    loc = rows.get("local-only")
    if fed:
        out.append(
            f"- FedAvg global mean Dice ≥ 0.86: **{'yes' if fed['mean'] >= 0.86 else 'no'}** ({fed['mean']:.3f})."
        )
    if cen:
        out.append(
            f"- Centralised ≥ 0.89: **{'yes' if cen['mean'] >= 0.89 else 'no'}** ({cen['mean']:.3f})."
        )
    if fed and cen:
        gap = 100 * (cen["mean"] - fed["mean"])
        out.append(
            f"- FedAvg within 2 points of centralised at equal compute: **{'yes' if gap <= 2 else 'no'}** ({gap:.1f} points behind)."
        )
    personal = [r for r in rows.values() if r["kind"] == "personal"]
    if fed and personal:

        def wins(r: dict[str, Any], other: dict[str, Any]) -> int:
            return sum(
                r["per_hospital"].get(h, 0) >= other["per_hospital"].get(h, 1) for h in HOSPITALS
            )

        best = max(personal, key=lambda r: (wins(r, fed), r["mean"]))
        label = next(k for k, v in rows.items() if v is best)
        out.append(
            f"- Best personal method ({label}) ≥ FedAvg on at least 4 of 5 hospitals: **{'yes' if wins(best, fed) >= 4 else 'no'}** ({wins(best, fed)} of 5)."
        )
        if loc:
            out.append(
                f"- {label} ≥ local-only on all 5 hospitals: **{'yes' if wins(best, loc) == 5 else 'no'}** ({wins(best, loc)} of 5)."
            )
    return [*out, ""]


def plot_curves(latest: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Mean test Dice of each run's global model by round, one line per method (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for method, runs in sorted(latest.items()):
        if method == "fedbn":  # its global model keeps the initial norm layers: not meaningful
            continue
        series: dict[int, list[float]] = defaultdict(list)
        for r in runs:
            curves = list(r["curves"].values())
            for points in zip(*curves, strict=False):
                series[points[0]["round"]].append(float(np.mean([p["dice"] for p in points])))
        xs = sorted(series)
        ax.plot(xs, [np.mean(series[x]) for x in xs], marker="o", ms=3, label=method)
    ax.set_xlabel("round (one local epoch each)")
    ax.set_ylabel("mean test Dice (global model)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("ACDC, five hospitals: learning curves")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def ablation_markdown(runs: list[dict[str, Any]]) -> str:
    """One factor of the recipe at a time: test Dice of each variant against the recipe's at the
    same number of epochs (one table row per variant and epoch count)."""
    from benchmarks.suite.ablation import VARIANTS

    by_epochs: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        by_epochs[int(r["config"]["rounds"])].append(r)
    lines = [
        "# Ablation of the training recipe (pooled ACDC, one factor at a time)",
        "",
        "Assembled by `python -m benchmarks.suite report` from `benchmarks/results/runs/ablation/`"
        " (command: `python -m benchmarks.suite.ablation --epochs N`). Pooled training of all "
        "five hospitals' training patients with the site trainer, the poly schedule (where the "
        "variant keeps it) running over the epochs; 3D Dice per test volume in the scans' own "
        "geometry, mean over the five hospitals. Each variant is compared with the recipe at the "
        "same number of epochs. Images/s is the training throughput seen in the run (the machine "
        "was shared with other jobs: compare ratios within a run, not absolute figures).",
        "",
        "| variant | what changes | epochs | seeds | mean Dice | vs recipe (points) | images/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for epochs in sorted(by_epochs, reverse=True):
        latest = _latest_by_method(by_epochs[epochs])
        means = {
            m: statistics.fmean(
                statistics.fmean(r["models"]["global"][h]["dice"] for h in HOSPITALS) for r in rs
            )
            for m, rs in latest.items()
        }
        base = means.get("recipe")
        for m, rs in sorted(latest.items(), key=lambda kv: (kv[0] != "recipe", -means[kv[0]])):
            diff = "—" if base is None or m == "recipe" else f"{100 * (means[m] - base):+.1f}"
            ips = statistics.fmean(r.get("images_per_second", float("nan")) for r in rs)
            lines.append(
                f"| {m} | {VARIANTS.get(m, ({}, {}, '?'))[2]} | {epochs} | "
                f"{','.join(str(r['seed']) for r in rs)} | {means[m]:.3f} | {diff} | {ips:.1f} |"
            )
    lines += ["", "Noise scale, from each run's last two evaluations (test Dice, same run):", ""]
    lines += [_ablation_noise(by_epochs[e], e) for e in sorted(by_epochs, reverse=True)]
    return "\n".join(lines) + "\n"


def _ablation_noise(runs: list[dict[str, Any]], epochs: int) -> str:
    """How far the runs' test Dice moves between their last two evaluations: the scale below
    which a variant's difference is noise (until several seeds are stored)."""
    moves = [
        (abs(c[-1]["dice"] - c[-2]["dice"]), r["config"]["method"])
        for r in runs
        if len(c := r.get("curves", {}).get("all", [])) >= 2
    ]
    if not moves:
        return f"- {epochs} epochs: no curve stored."
    largest = max(moves)
    seeds = sorted({r["seed"] for r in runs})
    return (
        f"- {epochs} epochs: up to {100 * largest[0]:.1f} points ({largest[1]}), median "
        f"{100 * statistics.median(m[0] for m in moves):.1f} over {len(moves)} runs; seeds "
        f"{', '.join(map(str, seeds))}. A variant closer to the recipe than that is not evidence "
        "of an effect."
    )


def write_reports() -> list[Path]:
    """Write every report that has stored runs; returns the files written."""
    from data_specs.files import atomic_write_text

    written: list[Path] = []
    from benchmarks.suite.outside_report import (
        OUTSIDE_PLOT,
        OUTSIDE_REPORT,
        outside_markdown,
        plot_outside,
    )

    runs = load_runs("inside")
    if runs:
        atomic_write_text(INSIDE_REPORT, inside_markdown(runs, load_runs("reference")))
        plot_curves(inside_summary(runs)["latest"], INSIDE_CURVES)
        written += [INSIDE_REPORT, INSIDE_CURVES]
    ablation = load_runs("ablation")
    if ablation:
        atomic_write_text(ABLATION_REPORT, ablation_markdown(ablation))
        written.append(ABLATION_REPORT)
    outside = load_runs("outside")
    if outside:
        atomic_write_text(OUTSIDE_REPORT, outside_markdown(outside))
        plot_outside(outside)
        written += [OUTSIDE_REPORT, OUTSIDE_PLOT]
    return written
