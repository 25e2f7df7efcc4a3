"""The reference script (``../shared/reference/acdc_reference.py``) at the suite's budget.

The issue's yardstick is a plain MONAI script outside the product. It stops on a wall-clock
budget, so its figures depend on how busy the machine is; here its own functions are called with
a fixed number of rounds (FedAvg) or epochs (pooled) equal to the suite's, so that it and fedseg
are compared at equal compute whatever the load. Its code is imported from where it lies, never
copied; its own data split (numpy ``default_rng(0)``, 14/2/4 patients) is kept.

Stored as table ``reference`` beside the inside runs; the inside report shows them as extra rows.
The table also holds fedseg's own runs on the script's patient split (methods ``fedseg_<inside
method>``: the suite's recipe through ``fedseg simulate``), so that both are scored on the same
test patients and a gap is the recipe's, not the split's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.suite.recipe import RunConfig

REFERENCE_SCRIPT = (
    Path(__file__).resolve().parents[3] / "shared" / "reference" / "acdc_reference.py"
)
REFERENCE_METHODS = ("ref_fedavg", "ref_central", "fedseg_fedavg_iopfl", "fedseg_central")
FEDSEG_PREFIX = "fedseg_"


def script_sha(path: Path = REFERENCE_SCRIPT) -> str:
    """sha256 (12 hex) of the reference script: part of each run's configuration."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else "missing"


def reference_config(method: str, rounds: int, path: Path = REFERENCE_SCRIPT) -> RunConfig:
    """A reference run's configuration (the script's hash stands for its recipe; fedseg's runs on
    the script's split carry the suite's recipe)."""
    if method.startswith(FEDSEG_PREFIX):
        from benchmarks.suite.acdc_runs import INSIDE_METHODS
        from benchmarks.suite.recipe import RECIPE_TRAIN, recipe_spec_json

        inside = method.removeprefix(FEDSEG_PREFIX)
        return RunConfig(
            table="reference",
            method=method,
            rounds=rounds,
            spec=recipe_spec_json(),
            train=dict(RECIPE_TRAIN),
            split={"scheme": "reference"},
            params=dict(INSIDE_METHODS[inside][1]),
        )
    return RunConfig(
        table="reference",
        method=method,
        rounds=rounds,
        spec={},
        train={"script": path.name, "sha256": script_sha(path), "REF_FAST": "1"},
        split={"script": "default_rng(0), 14/2/4 patients per group"},
    )


def _load(path: Path, acdc_dir: Path, out: Path) -> ModuleType:
    if not path.is_file():
        raise FileNotFoundError(f"reference script not found: {path}")
    os.environ.update(ACDC_DATA=str(acdc_dir), ACDC_OUT=str(out), REF_FAST="1")
    spec = importlib.util.spec_from_file_location("acdc_reference", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _per_hospital(summary: dict[str, Any]) -> dict[str, float]:
    return {g: float(v["dice_mean"]) for g, v in summary.items()}


def run_reference(
    cfg: RunConfig, seed: int, work: Path, acdc_dir: Path, device: str = "cpu"
) -> dict[str, Any]:
    """Run the reference script's ``run_fedavg`` or ``run_central`` for ``cfg.rounds``, or
    fedseg's inside method on the script's split."""
    if cfg.method.startswith(FEDSEG_PREFIX):
        from dataclasses import replace

        from benchmarks.suite.acdc_runs import run_inside

        inside = replace(cfg, method=cfg.method.removeprefix(FEDSEG_PREFIX))
        return run_inside(inside, seed, work, acdc_dir, device)
    if device != "cpu" or seed != 0:
        raise ValueError("the reference script runs on the CPU with its own seed 0 only")
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as out:
        ref = _load(REFERENCE_SCRIPT, acdc_dir, Path(out))
        started = time.monotonic()
        data = ref.load_data()
        unlimited = 10.0**9  # stop on rounds / epochs, never on the clock
        if cfg.method == "ref_fedavg":
            r = ref.run_fedavg(data, unlimited, max_rounds=cfg.rounds)
            models = {
                "global": _per_hospital(r["test_global"]),
                "personal": _per_hospital(r["test_personal"]),
            }
            done = r["rounds"]
        elif cfg.method == "ref_central":
            r = ref.run_central(data, unlimited, max_epochs=cfg.rounds)
            models = {"global": _per_hospital(r["test_final"])}
            done = r["epochs"]
        else:
            raise ValueError(f"unknown reference method {cfg.method!r}")
    if done != cfg.rounds:
        raise RuntimeError(f"the reference stopped after {done} of {cfg.rounds}")
    return {
        "models": models,
        "images_per_s": r["steps"].get("imgs_per_s"),
        "train_wall_seconds": r["wall_s"],
        "wall_seconds": time.monotonic() - started,
    }
