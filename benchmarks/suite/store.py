"""Run records: one JSON file per run under ``benchmarks/results/runs/<table>/``."""

from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.suite.recipe import RunConfig
from data_specs.files import atomic_write_text

RUNS = Path(__file__).resolve().parents[1] / "results" / "runs"


def run_path(cfg: RunConfig, seed: int, root: Path = RUNS) -> Path:
    """Where the record of ``cfg`` at ``seed`` lives."""
    return root / cfg.table / f"{cfg.method}-seed{seed}-{cfg.config_hash()}.json"


def has_run(cfg: RunConfig, seed: int, root: Path = RUNS) -> bool:
    """True when this configuration and seed has already been run and stored."""
    return run_path(cfg, seed, root).is_file()


def commit() -> str:
    """The repository's HEAD commit (with ``+dirty`` when the tree has changes)."""
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def save_run(
    cfg: RunConfig, seed: int, result: dict[str, Any], *, device: str, root: Path = RUNS
) -> Path:
    """Write one run's record atomically and return its path."""
    record = {
        "config": asdict(cfg),
        "config_hash": cfg.config_hash(),
        "seed": seed,
        "commit": commit(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "device": device,
        },
        **result,
    }
    path = run_path(cfg, seed, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True))
    return path


def load_runs(table: str, root: Path = RUNS) -> list[dict[str, Any]]:
    """Every stored record of a table."""
    folder = root / table
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
