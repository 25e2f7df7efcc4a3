"""One factor at a time: pooled ACDC training with the site trainer, each factor of the recipe
changed alone, stored as runs of the ``ablation`` table.

``python -m benchmarks.suite.ablation [--epochs N] [--variants a,b]``. Pooled training (all five
hospitals' training patients at one site), ``SiteTrainer.train_round`` called once per epoch with
the round number (so the poly schedule runs over the epochs), then 3D Dice per test volume in
the scans' own geometry, as in the inside table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.acdc_common import HOSPITALS, acdc_sites, default_acdc_dir, fresh_dir
from benchmarks.suite.recipe import RECIPE_TRAIN, RunConfig, recipe_spec_json
from benchmarks.suite.store import has_run, save_run

# variant -> (spec changes, train changes, what it tests)
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "recipe": ({}, {}, "the recipe"),
    "patch": (
        {"fit": "patch"},
        {"foreground_oversample": 0.33},
        "random 128² patches (1/3 centred on a label) and sliding-window inference instead of "
        "whole slices resized to 128²; MONAI per-item flips, rotation and intensity jitter",
    ),
    "small_net": (
        {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
        {},
        "the old `fedseg simulate` network (8-16-32, one residual unit)",
    ),
    "no_norm": ({"intensity": "none"}, {}, "intensities as stored (no per-volume z-score)"),
    "constant_lr": ({}, {"lr_schedule": "constant"}, "no learning-rate schedule"),
    "fp32": ({}, {"precision": "fp32", "channels_last": False}, "fp32, contiguous memory"),
    "ref_like": (
        {"intensity": "none"},
        {"lr_schedule": "constant"},
        "the reference script's choices: constant learning rate and intensities as stored",
    ),
}


def run_variant(
    name: str, epochs: int, seed: int, work: Path, acdc_dir: Path
) -> tuple[RunConfig, dict[str, Any]]:
    """Train and score one variant; returns its configuration and record body."""
    from benchmarks.suite.acdc_runs import TestSets
    from data_specs.constants import SplitName
    from data_specs.manifests.manifest import load_manifest
    from data_specs.sources.partition import partition_manifests, write_partition
    from data_specs.task_spec import TaskSpec
    from data_specs.wire import TrainConfig
    from site_agent.training.datasets import load_split
    from site_agent.training.trainer import SiteTrainer, cpu_state

    spec_changes, train_changes, _ = VARIANTS[name]
    spec_json = {**recipe_spec_json(), **spec_changes}
    train = {**RECIPE_TRAIN, **train_changes}
    cfg = RunConfig(table="ablation", method=name, rounds=epochs, spec=spec_json, train=train)
    spec = TaskSpec.model_validate(spec_json)
    fresh_dir(work)
    sites = acdc_sites(acdc_dir, work / "manifests", seed=seed, **cfg.split)
    manifests = sites.by_name()
    pooled = partition_manifests(
        [load_manifest(p) for p in manifests.values()], "iid", 1, seed=seed
    )
    manifest = load_manifest(write_partition(pooled, work / "pooled")[0])
    data = load_split(
        manifest,
        spec,
        SplitName.TRAINING,
        train=True,
        seed=seed,
        fit="random",
        foreground_ratio=float(train.get("foreground_oversample", 0.33)),
    )
    config = TrainConfig.model_validate({**train, "seed": seed})
    trainer = SiteTrainer(spec, data, None, progress=False)
    tests = TestSets(manifests, spec)
    started = time.monotonic()
    curve, state = [], cpu_state(trainer.model)
    images = 0
    for epoch in range(1, epochs + 1):
        result = trainer.train_round(state, config, round_=epoch, total_rounds=epochs)
        state = result.state
        images += result.steps * config.batch_size
        if epoch % max(1, epochs // 5) == 0 or epoch == epochs:
            per = {h: tests.score(trainer.model, h, hd95=False)["dice"] for h in HOSPITALS}
            curve.append({"round": epoch, "dice": sum(per.values()) / len(per), "per_site": per})
            print(f"  {name} epoch {epoch}: test Dice {curve[-1]['dice']:.3f}", flush=True)
    train_seconds = time.monotonic() - started
    scores = {h: tests.score(trainer.model, h) for h in HOSPITALS}
    return cfg, {
        "models": {"global": scores},
        "curves": {"all": curve},
        "wall_seconds": train_seconds,
        "images_per_second": images / train_seconds,
        "test_volumes": {h: len(tests.cases(h)) for h in HOSPITALS},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.suite.ablation", description=__doc__
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--acdc-dir", type=Path, default=default_acdc_dir())
    parser.add_argument(
        "--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "fedseg_ablation"
    )
    args = parser.parse_args(argv)
    for name in args.variants.split(","):
        probe = RunConfig(
            table="ablation",
            method=name,
            rounds=args.epochs,
            spec={**recipe_spec_json(), **VARIANTS[name][0]},
            train={**RECIPE_TRAIN, **VARIANTS[name][1]},
        )
        if has_run(probe, args.seed):
            print(f"{name}: stored already")
            continue
        cfg, body = run_variant(name, args.epochs, args.seed, args.work_dir / name, args.acdc_dir)
        path = save_run(cfg, args.seed, body, device="cpu")
        print(f"{name}: stored {path.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
