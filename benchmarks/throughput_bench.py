"""Training throughput of the site trainer, today's path against the recipe, side by side; GEMM peak.

``python -m benchmarks.throughput_bench [--steps N]`` writes ``benchmarks/results/throughput.md``.

Same U-Net (channels 16-32-64-128, 2 residual units, batch norm), batch 16, one ACDC hospital's
training slices, DiceCE, Adam, one thread per process as torch picks it. Two trainer paths, timed
in alternating blocks within one run so a load change hits both alike:

- *before*: what the trainer did before the recipe: fp32, contiguous memory, random 128×128
  patches cut from the whole slice by MONAI per item with flips, rotation and intensity jitter;
- *recipe*: whole slices resized to 128² once, augmented per batch on the device
  (``BatchAugment``), bf16 autocast and channels-last (``TrainConfig`` defaults).

Also the GEMM rate this CPU reaches in fp32 and bf16 (square matmuls), and the share of it the
recipe's training uses (FLOPs of a forward and backward pass counted by torch's
``FlopCounterMode``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.acdc_common import RESULTS, acdc_sites, default_acdc_dir, fresh_dir
from benchmarks.suite.recipe import ACDC_RECIPE_SPEC, RECIPE_TRAIN

REPORT = RESULTS / "throughput.md"


def gemm_rate(dtype: torch.dtype, n: int = 2048, reps: int = 8) -> float:
    """Best-of GFLOP/s of an ``n × n`` matmul in ``dtype``."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def train_flops(spec: Any, batch: int) -> float:
    """FLOPs of one forward and backward pass of the spec's U-Net on a batch."""
    from torch.utils.flop_counter import FlopCounterMode

    from data_specs.task_spec import build_unet

    model = build_unet(spec)
    x = torch.randn(batch, spec.in_channels, *spec.patch_size)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return float(counter.get_total_flops())


def evaluate_vs_infer(spec: Any, manifest: Path) -> tuple[float, float, int]:
    """Seconds of ``fedseg site evaluate``'s path and of ``fedseg site infer``'s on the same test
    scans (untrained network, so HD95 sees noisy masks: the harder case)."""
    from data_specs.manifests.manifest import load_manifest
    from data_specs.task_spec import build_unet
    from site_agent.clinic.inference import segment_scan
    from site_agent.clinic.scan_evaluation import evaluate_cases, load_eval_cases

    m = load_manifest(manifest)
    model = build_unet(spec).eval()
    t = time.perf_counter()
    cases = load_eval_cases(m, spec, "test")
    evaluate_cases(model, cases, spec)
    evaluate_s = time.perf_counter() - t
    scans = [m.resolve(c).image for c in m.iter_cases("test")]
    t = time.perf_counter()
    for scan in scans:
        segment_scan(model, spec, scan)
    return evaluate_s, time.perf_counter() - t, len(scans)


def _trainer(spec: Any, path: str, manifest: Path, config: Any) -> Any:
    from data_specs.constants import SplitName
    from data_specs.manifests.manifest import load_manifest
    from site_agent.training.datasets import load_split
    from site_agent.training.trainer import SiteTrainer

    m = load_manifest(manifest)
    data = load_split(m, spec, SplitName.TRAINING, train=True, seed=0, fit="random")
    return SiteTrainer(spec, data, None, progress=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput_bench")
    parser.add_argument("--steps", type=int, default=30, help="optimiser steps per block")
    parser.add_argument("--blocks", type=int, default=3, help="alternating blocks per path")
    parser.add_argument("--acdc-dir", type=Path, default=default_acdc_dir())
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/fedseg_throughput"))
    args = parser.parse_args(argv)
    from data_specs.constants import InputFit
    from data_specs.wire import TrainConfig
    from deploy.launcher.report import report_header, write_report

    work = fresh_dir(args.work_dir)
    manifest = acdc_sites(args.acdc_dir, work / "manifests").manifests[0]
    recipe_spec = ACDC_RECIPE_SPEC
    before_spec = recipe_spec.model_copy(update={"fit": InputFit.PATCH})
    base = {k: RECIPE_TRAIN[k] for k in ("optimizer", "lr", "batch_size")}
    cfg_before = TrainConfig(
        **base,
        max_steps=args.steps,
        precision="fp32",
        channels_last=False,
        foreground_oversample=0.0,
    )
    cfg_recipe = TrainConfig(**base, max_steps=args.steps)
    paths = {
        "before": (_trainer(before_spec, "before", manifest, cfg_before), cfg_before),
        "recipe": (_trainer(recipe_spec, "recipe", manifest, cfg_recipe), cfg_recipe),
    }
    rates: dict[str, list[float]] = {k: [] for k in paths}
    for block in range(args.blocks + 1):  # block 0 warms up both
        for name, (trainer, cfg) in paths.items():
            state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
            t = time.perf_counter()
            result = trainer.train_round(state, cfg, round_=block + 1)
            seconds = time.perf_counter() - t
            if block:
                rates[name].append(result.steps * cfg.batch_size / seconds)
    fp32, bf16 = gemm_rate(torch.float32), gemm_rate(torch.bfloat16)
    eval_s, infer_s, n_scans = evaluate_vs_infer(recipe_spec, manifest)
    flops = train_flops(recipe_spec, 1)
    med = {k: statistics.median(v) for k, v in rates.items()}
    speedup = med["recipe"] / med["before"]
    used = med["recipe"] * flops / 1e9
    text = "\n".join(
        [
            report_header(
                "Training throughput: before the recipe and with it",
                "python -m benchmarks.throughput_bench " + " ".join(argv or []),
            ),
            "## Setting",
            "",
            __doc__.split("\n\n", 1)[1].strip(),
            "",
            f"- {args.blocks} timed blocks of {args.steps} steps per path (after one warm-up block each), "
            f"torch threads {torch.get_num_threads()}; images/s = steps × batch / wall time of "
            "`SiteTrainer.train_round` (data loading and augmentation included).",
            "",
            "## Results",
            "",
            "| path | images/s per block | median images/s |",
            "|---|---|---|",
            *[f"| {k} | {', '.join(f'{v:.1f}' for v in rates[k])} | {med[k]:.1f} |" for k in rates],
            "",
            f"- Speed-up of the recipe: **{speedup:.2f}×** (goal ≥ 1.5×).",
            f"- GEMM peak of this CPU (2048² matmul, best of 8): fp32 {fp32:.0f} GFLOP/s, "
            f"bf16 {bf16:.0f} GFLOP/s.",
            f"- One forward + backward pass of the U-Net on one 128² image: {flops / 1e9:.2f} GFLOP; "
            f"at {med['recipe']:.1f} images/s the recipe's training runs at {used:.0f} GFLOP/s, "
            f"{100 * used / bf16:.0f} % of the bf16 GEMM peak ({100 * used / fp32:.0f} % of fp32's). "
            "The rest goes to memory-bound layers (batch norm, activations, upsampling), the loss "
            "and the optimiser, which no GEMM rate describes.",
            f"- `fedseg site evaluate`'s path (read, predict, map back, 3D Dice and HD95 per "
            f"volume) on {n_scans} test volumes: {eval_s:.1f} s; `fedseg site infer`'s path on "
            f"the same scans: {infer_s:.1f} s; ratio **{eval_s / infer_s:.2f}×** (goal ≤ 3×).",
            "",
        ]
    )
    write_report(REPORT, text)
    print(text)


if __name__ == "__main__":
    main()
