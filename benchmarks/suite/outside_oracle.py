"""ORACLE upper bounds of the outside table (labels used): how much room is there at all?

Never a product path. Each figure below looks at the held-out hospital's labels, which an
outside site does not have; they bound what a label-free method working from the same
routing bundle could reach, and say whether the outside table's goal (routed − global ≥ +3
points on the ACDC leave-one-out mean) is attainable.

Per stored fold (the federation the outside run trained, read back from its work dir
``/tmp/suite_work/outside-loo_<H>-0``; nothing there is written):

- every model of the routing bundle (the global model and each shared personal model) under
  each batch-norm statistics mode (``stored``, ``site`` = re-estimated on the site's unlabelled
  scans, ``mix``), 3D Dice per test volume as ``fedseg site evaluate`` computes it;
- the best of them per fold and per test volume, chosen **with labels**;
- the global model fine-tuned on the held-out hospital's **labelled training patients** (its
  test patients are never seen), Adam, the suite's batch size and augmentation, scored after
  a few steps.

Usage::

    python -m benchmarks.suite.outside_oracle                  # every fold, then the report
    python -m benchmarks.suite.outside_oracle --held-out HCM   # one fold
    python -m benchmarks.suite.outside_oracle --held-out       # the report from stored figures
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.acdc_common import HOSPITALS
from benchmarks.suite.acdc_runs import TestSets
from data_specs.files import atomic_write_text
from data_specs.task_spec import TaskSpec

FINETUNE_STEPS = (30, 120)
FINETUNE_LR = 3e-4
RESULTS = Path(__file__).resolve().parents[1] / "results"
REPORT = RESULTS / "suite_outside_oracle.md"
FIGURES = RESULTS / "suite_outside_oracle.json"


def load_fold(held_out: str, work: Path, runs: Path) -> dict[str, Any]:
    """The stored fold's routing bundle, spec, manifests and test sets (read only)."""
    import torch

    from personalization.outside import decode_routing_bundle

    record = json.loads(next(runs.glob(f"loo_{held_out}-seed0-*.json")).read_text())
    spec = TaskSpec.model_validate(record["config"]["spec"])
    routing = work / "federation" / "sites" / f"outside_{held_out}" / "routing"
    data = sorted(routing.glob("*.safetensors"))[0].read_bytes()
    manifests = {p.parent.name: p for p in (work / "manifests").glob("*/dataset.json")}
    by_hospital = {
        h: next(p for n, p in manifests.items() if n.endswith(h.lower())) for h in HOSPITALS
    }
    bundle = decode_routing_bundle(data)
    return {
        "spec": spec,
        "experts": [{k: torch.from_numpy(v.copy()) for k, v in e.items()} for e in bundle.experts],
        "names": [s.name for s in bundle.sources],
        "manifests": by_hospital,
        "unlabelled": next((work / "unlabelled").glob("*/dataset.json")),
        "tests": TestSets(by_hospital, spec),
    }


def expert_volumes(fold: dict[str, Any], held_out: str) -> dict[str, list[float]]:
    """3D Dice per test volume of every bundle model under every batch-norm mode."""
    import torch

    from personalization.outside import global_model
    from personalization.outside.bn_stats import (
        BN_MODES,
        estimate_site_stats,
        read_stats,
        stats_for,
        write_stats,
    )
    from personalization.outside.safeguard import collect_scans
    from site_agent.clinic.adapt import adaptation_manifest, unlabelled_scans

    spec = fold["spec"]
    scans = unlabelled_scans(adaptation_manifest(fold["unlabelled"]), spec, seed=0)
    images = collect_scans(scans, 128)
    batches = [torch.cat(images[i : i + 16]) for i in range(0, len(images), 16)]
    out: dict[str, list[float]] = {}
    for name, state in zip(fold["names"], fold["experts"], strict=True):
        model = global_model(spec, state)
        stored = read_stats(model)
        site = estimate_site_stats(model, batches)
        for mode in BN_MODES:
            write_stats(model, stats_for(mode, stored, site, 0.5))
            out[f"{name}|{mode}"] = list(
                fold["tests"].score(model, held_out, hd95=False)["case_dice"]
            )
    return out


def finetuned(fold: dict[str, Any], held_out: str, seed: int = 0) -> dict[str, float]:
    """Mean test Dice of the global model fine-tuned on the held-out hospital's labelled
    training patients, after each of ``FINETUNE_STEPS`` steps (ORACLE: labels)."""
    import torch
    from torch.utils.data import DataLoader

    from data_specs.constants import SplitName
    from data_specs.manifests.manifest import load_manifest
    from personalization.outside import global_model
    from site_agent.training.batch_augment import BatchAugment
    from site_agent.training.datasets import load_split
    from site_agent.training.local_training import make_loss

    torch.manual_seed(seed)
    spec = fold["spec"]
    manifest = load_manifest(fold["manifests"][held_out])
    ds = load_split(manifest, spec, SplitName.TRAINING, train=True, seed=seed)
    if ds is None:
        raise ValueError(f"{held_out} has no training split")
    loader = DataLoader(
        ds, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    model = global_model(spec, fold["experts"][0])
    augment = BatchAugment(spec.spatial_dims, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=FINETUNE_LR)
    loss_fn = make_loss()
    out: dict[str, float] = {}
    step = 0
    while step < max(FINETUNE_STEPS):
        for batch in loader:
            model.train()
            x, y = augment(batch["image"].float(), batch["label"])
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            step += 1
            if step in FINETUNE_STEPS:
                out[str(step)] = float(fold["tests"].score(model, held_out, hd95=False)["dice"])
            if step >= max(FINETUNE_STEPS):
                break
    return out


def fold_bounds(volumes: dict[str, list[float]], tuned: dict[str, float]) -> dict[str, float]:
    """The oracle figures of one fold from its per-volume Dice and fine-tuning results."""
    import numpy as np

    stored = {k: v for k, v in volumes.items() if k.endswith("|stored")}
    everything = np.array(list(volumes.values()))
    return {
        "global": float(np.mean(volumes["global|stored"])),
        "global site BN": float(np.mean(volumes["global|site"])),
        "global mix BN": float(np.mean(volumes["global|mix"])),
        "best model (labels)": max(float(np.mean(v)) for v in stored.values()),
        "best model × BN (labels)": float(everything.mean(axis=1).max()),
        "best model per volume (labels)": float(
            np.max(np.array(list(stored.values())), axis=0).mean()
        ),
        "best model × BN per volume (labels)": float(everything.max(axis=0).mean()),
        **{f"fine-tuned {s} steps (labels)": v for s, v in tuned.items()},
    }


def report(figures: dict[str, dict[str, float]]) -> str:
    """The markdown report of the oracle figures (held-out hospital -> figure -> Dice)."""
    folds = [h for h in HOSPITALS if h in figures]
    given = {c for h in folds for c in figures[h]}
    first = [c for c in ("global", "global site BN", "global mix BN") if c in given]
    rest = given - set(first)
    columns = [*first, *sorted(rest, key=lambda c: (c.startswith("fine-tuned"), len(c), c))]
    head = ["held-out", *columns]
    lines = [
        "# ORACLE upper bounds of the outside table (labels used; not a product path)",
        "",
        "Written by `python -m benchmarks.suite.outside_oracle` from the outside table's stored "
        "federations (seed 0). Every column but the first three looks at the held-out "
        "hospital's labels: per-volume or per-fold choices among the routing bundle's models "
        "and batch-norm modes, and the global model fine-tuned on the held-out hospital's "
        f"labelled training patients (Adam lr {FINETUNE_LR}, batch 16, the suite's "
        "augmentation; its test patients never seen). Test Dice as in `suite_outside.md` "
        "(3D per volume, mean of RV, MYO, LV; 8 volumes per hospital).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for h in folds:
        lines.append("| " + " | ".join([h, *(f"{figures[h][c]:.3f}" for c in columns)]) + " |")
    means = {c: sum(figures[h][c] for h in folds) / len(folds) for c in columns}
    lines.append("| mean | " + " | ".join(f"{means[c]:.3f}" for c in columns) + " |")
    lines.append(
        "| mean − global (points) | "
        + " | ".join(f"{100 * (means[c] - means['global']):+.1f}" for c in columns)
        + " |"
    )
    best = max((c for c in columns if c != "global"), key=lambda c: means[c])
    gain = 100 * (means[best] - means["global"])
    lines += [
        "",
        f"Goal routed − global ≥ +3 points on the mean: the largest oracle gain here is "
        f"**{gain:+.1f} points** ({best}), so it is **{'within' if gain >= 3 else 'out of'}** "
        "reach of these oracles; a label-free method that picks among the same models and "
        "batch-norm modes, per site or per volume, cannot beat those columns.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Compute the oracle figures of the chosen folds, merge them into the stored figures and
    write the report (several processes, one fold each, may run at once)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite.outside_oracle")
    parser.add_argument("--held-out", nargs="*", default=list(HOSPITALS), choices=HOSPITALS)
    parser.add_argument("--work-root", type=Path, default=Path("/tmp/suite_work"))
    parser.add_argument("--runs", type=Path, default=RESULTS / "runs" / "outside")
    args = parser.parse_args(argv)
    for h in args.held_out:
        started = time.process_time()
        fold = load_fold(h, args.work_root / f"outside-loo_{h}-0", args.runs)
        bounds = fold_bounds(expert_volumes(fold, h), finetuned(fold, h))
        print(h, {k: round(v, 3) for k, v in bounds.items()}, flush=True)
        print(f"{h}: {time.process_time() - started:.0f} CPU s", flush=True)
        figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
        figures[h] = bounds
        atomic_write_text(FIGURES, json.dumps(figures, indent=1, sort_keys=True) + "\n")
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    if figures:
        atomic_write_text(REPORT, report(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
