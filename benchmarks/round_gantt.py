"""Gantt chart of a federation's rounds: each site's phases and the aggregator, on one time axis."""

from __future__ import annotations

from pathlib import Path

from benchmarks.round_timeline import RoundFigures

COLORS = {
    "wait": "#e8e8e8",
    "download": "#1f77b4",
    "load": "#9467bd",
    "train": "#2ca02c",
    "validate": "#ff7f0e",
    "encode": "#8c564b",
    "upload": "#d62728",
    "aggregate": "#17becf",
    "round open": "#fff3b0",
}


def plot_gantt(
    figures: list[RoundFigures],
    path: Path,
    *,
    t0: float,
    title: str,
    zoom_round: int | None = None,
) -> None:
    """Draw every round (top) and, below, the boundary between ``zoom_round`` and the next.

    Args:
        figures: from ``benchmarks.round_timeline.analyse``.
        path: the PNG to write.
        t0: Unix time of the axis origin (the launch).
        title: the chart's title.
        zoom_round: the round whose end (and the next one's start) the lower panel magnifies.
            Default None (the middle round).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = sorted({s.name for f in figures for s in f.sites})
    rows = ["aggregator", *names]
    fig, axes = plt.subplots(2, 1, figsize=(13, 2.2 + 0.9 * len(rows)), dpi=110)
    zoom = zoom_round or figures[len(figures) // 2].number
    for ax, zoomed in zip(axes, (False, True), strict=True):
        for f in figures:
            y = len(rows) - 1
            ax.broken_barh(
                [(f.opened - t0, f.closed - f.opened)], (y - 0.45, 0.9), color=COLORS["round open"]
            )
            if f.aggregating is not None:
                ax.broken_barh(
                    [(f.aggregating - t0, max(f.closed - f.aggregating, 1e-4))],
                    (y - 0.3, 0.6),
                    color=COLORS["aggregate"],
                )
            for site in f.sites:
                y = len(rows) - 1 - rows.index(site.name)
                for phase, (start, end) in site.phases.items():
                    if start <= 0:
                        continue
                    # wait: thin; load: the lower half (it runs beside the download).
                    low, height = {"wait": (-0.15, 0.3), "load": (-0.4, 0.35)}.get(
                        phase, (-0.35, 0.7)
                    )
                    ax.broken_barh(
                        [(start - t0, max(end - start, 1e-4))],
                        (y + low, height),
                        color=COLORS.get(phase, "gray"),
                    )
            if not zoomed:
                ax.text(f.opened - t0, len(rows) - 0.4, f"r{f.number}", fontsize=7, va="bottom")
        ax.set_yticks(range(len(rows)), list(reversed(rows)), fontsize=8)
        ax.grid(alpha=0.3, axis="x")
        ax.set_xlabel("seconds since launch")
        if zoomed:
            this = next((f for f in figures if f.number == zoom), figures[0])
            after = next((f for f in figures if f.number == zoom + 1), None)
            lo = this.closed - t0 - 0.6
            hi = (after.opened - t0 if after else this.closed - t0) + 0.6
            ax.set_xlim(lo, hi)
            ax.set_title(f"zoom: end of round {zoom} and start of round {zoom + 1}", fontsize=9)
        else:
            ax.set_title(title, fontsize=10, pad=14)  # above the round labels
    handles = [Patch(color=c, label=n) for n, c in COLORS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(COLORS), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
