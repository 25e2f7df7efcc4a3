"""Report folders for the demo, simulations and benchmarks: markdown tables plus PNG plots."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from data_specs.files import atomic_write_text


def machine_line() -> str:
    """One line describing this machine (for reports)."""
    cpus = os.cpu_count() or 0
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        mem = f", {mem_gib:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        mem = ""
    return f"{platform.machine()} {platform.system()}, {cpus} CPU cores{mem}, Python {platform.python_version()}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; floats shown with 3 decimals, None and NaN as an em dash."""

    def cell(v: object) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "—"
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report_header(title: str, command: str) -> str:
    """Title, date, machine and the exact command that produced a report."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"# {title}\n\n- Date: {now}\n- Machine: {machine_line()}\n- Command: `{command}`\n"


def write_report(path: Path, text: str) -> Path:
    """Write a markdown report atomically, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text if text.endswith("\n") else text + "\n")
    return path


def plot_dice_per_round(
    history: Mapping[str, Sequence[tuple[int, float]]],
    path: Path,
    *,
    title: str = "Validation Dice per round",
) -> Path:
    """Line plot of Dice against round, one line per site.

    Args:
        history: ``{site: [(round, dice), ...]}``. Example: ``{"site_0": [(1, 0.4), (2, 0.6)]}``.
        path: PNG to write.
        title: plot title. Default ``"Validation Dice per round"``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for site, points in sorted(history.items()):
        if points:
            rounds, dice = zip(*sorted(points), strict=True)
            ax.plot(rounds, dice, marker="o", label=site)
    ax.set_xlabel("round")
    ax.set_ylabel("mean foreground Dice")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_grouped_bars(
    table: Mapping[str, Mapping[str, float | None]],
    path: Path,
    *,
    title: str = "Test Dice per site",
    ylabel: str = "mean foreground Dice",
) -> Path:
    """Grouped bar chart: one group per row key (site), one bar per column key (model).

    Args:
        table: ``{site: {model: value}}``; missing or None values are left out.
        path: PNG to write.
        title: plot title.
        ylabel: y-axis label.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(table)
    series: list[str] = []
    for row in table.values():
        series += [k for k in row if k not in series]
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) + 2), 4), dpi=110)
    for j, name in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
        vals = [table[g].get(name) for g in groups]
        ax.bar(
            [x for x, v in zip(xs, vals, strict=True) if v is not None],
            [v for v in vals if v is not None],
            width=width,
            label=name,
        )
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    # Beside the plot, so it never hides a group of bars.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path)


def _save(fig: object, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, bbox_inches="tight")  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    os.replace(tmp, path)
    return path
