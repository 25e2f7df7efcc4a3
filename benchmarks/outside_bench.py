"""IOP-FL outside personalisation: leave-one-hospital-out over the five ACDC hospitals (issue 7).

``python -m benchmarks.outside_bench [--quick]`` writes ``benchmarks/results/outside.md`` and
``outside_dice.png``.

For each hospital in turn: a federation of the other four trains with IOP-FL inside
personalisation (every site shares its personal model, ``share_personal``), in-process through
the real aggregator and site agents. The held-out hospital then enrolls as an outside site, is
granted the experiment and downloads the routing bundle (global + four personal models). On its
test scans it scores

- the global model alone;
- the output average of all experts (softmax mean of five forward passes);
- TENT on the global model (entropy minimisation of the norm layers' affine parameters);
- the routed model, adapted by ``fedseg site adapt``'s code (``adapt_experiment``) and loaded
  back from the site's work dir.

Adaptation sees only images: it reads a manifest whose test cases carry no label at all; Dice
is computed afterwards against the labelled manifest.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from benchmarks.acdc_common import (
    ACDC_SPEC,
    EVAL_LINE,
    HOSPITALS,
    RESULTS,
    SEED_CAVEAT,
    AcdcSites,
    EvalSets,
    InProcessFederation,
    Stopwatch,
    acdc_sites,
    command_line,
    describe_test_sets,
    fmt,
    fresh_dir,
    mean_or_none,
    parse_args,
    seconds_str,
)

NAME = "outside_bench"
REPORT = RESULTS / "outside.md"
PLOT = RESULTS / "outside_dice.png"
METHODS = ("global", "output average", "TENT", "routed")


@dataclass(frozen=True)
class Setting:
    """Federation and adaptation budget (the inside benchmark's federation budget)."""

    rounds: int
    max_steps: int
    adapt_steps: int
    held_out: tuple[str, ...] = HOSPITALS
    batch_size: int = 8
    lr: float = 3e-3
    adapt_lr: float = 1e-3
    test_frac: float = 0.25


FULL = Setting(rounds=10, max_steps=20, adapt_steps=50)
QUICK = Setting(rounds=1, max_steps=2, adapt_steps=3, held_out=HOSPITALS[:1], test_frac=0.05)
IOPFL_ALPHA = 0.1


@dataclass
class Fold:
    """What one held-out hospital measured."""

    held_out: str
    dice: dict[str, float | None]
    adapt_seconds: dict[str, float]
    infer_ms: dict[str, float]
    federation_seconds: float
    experts: list[str]
    mean_mix: dict[str, list[float]]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(NAME, __doc__, argv)
    setting = QUICK if args.quick else FULL
    started = time.monotonic()
    work = fresh_dir(args.work_dir)
    sites = acdc_sites(
        args.acdc_dir, work / "manifests", seed=args.seed, test_frac=setting.test_frac
    )
    manifests = sites.by_name()
    unlabelled = {h: _unlabelled_copy(manifests[h], work / "unlabelled") for h in setting.held_out}
    evals = EvalSets({h: manifests[h] for h in setting.held_out}, ACDC_SPEC)
    inside_of = {
        h: [g for g in HOSPITALS if g != h][: 2 if args.quick else None] for h in setting.held_out
    }
    folds = []
    for h in setting.held_out:
        fold = _fold(h, inside_of[h], manifests, unlabelled[h], evals, setting, args, work)
        folds.append(fold)
        print(f"held out {h}: " + ", ".join(f"{m} {fmt(fold.dice[m])}" for m in METHODS))
    total = time.monotonic() - started
    (work / "folds.json").write_text(json.dumps([f.__dict__ for f in folds], indent=2))
    from deploy.report import plot_grouped_bars, write_report

    table = {f.held_out: dict(f.dice) for f in folds}
    table["mean"] = {m: mean_or_none(f.dice[m] for f in folds) for m in METHODS}
    plot_grouped_bars(table, PLOT, title="ACDC held-out hospital: test Dice")
    write_report(
        REPORT,
        _report(folds, setting, sites, evals, inside_of, args, total, command_line(NAME, argv)),
    )
    print(f"report written to {REPORT} and {PLOT} ({seconds_str(total)})")


def _unlabelled_copy(manifest_path: Path, out: Path) -> Path:
    """The hospital's manifest with its test cases stripped of labels (what adaptation reads)."""
    from data_specs.manifest import CaseEntry, load_manifest, save_manifest

    m = load_manifest(manifest_path)
    stripped = m.model_copy(update={"test": [CaseEntry(image=c.image) for c in m.test or []]})
    folder = out / m.site_id
    folder.mkdir(parents=True, exist_ok=True)
    save_manifest(stripped, folder / "dataset.json")
    return folder / "dataset.json"


def _fold(
    held_out: str,
    inside: list[str],
    manifests: dict[str, Path],
    unlabelled: Path,
    evals: EvalSets,
    setting: Setting,
    args: Any,
    work: Path,
) -> Fold:
    from aggregator.schemas.experiments import ExperimentCreate
    from data_specs.constants import OptimizerName, PersonalizationMethod, SplitName
    from data_specs.manifest import load_manifest
    from data_specs.wire import PersonalizationConfig, TrainConfig
    from personalization.outside import (
        AdaptConfig,
        AdaptReport,
        OutputAverage,
        decode_routing_bundle,
        global_model,
        tent_adapt,
    )
    from site_agent.adapt import adapt_experiment
    from site_agent.datasets import load_split

    with InProcessFederation(work / f"fold_{held_out}") as fed:
        for name in inside:
            fed.add_site(name, manifests[name], share_personal=True)
        body = ExperimentCreate(
            name=f"outside-bench-without-{held_out}",
            spec=ACDC_SPEC,
            rounds=setting.rounds,
            fraction=1.0,
            min_sites=len(inside),
            sites=[fed.site_ids[n] for n in inside],
            train=TrainConfig(
                local_epochs=1,
                batch_size=setting.batch_size,
                lr=setting.lr,
                optimizer=OptimizerName.ADAM,
                max_steps=setting.max_steps,
                personalization=PersonalizationConfig(
                    method=PersonalizationMethod.IOPFL, alpha=IOPFL_ALPHA
                ),
            ),
            round_deadline_s=24 * 3600,
            seed=args.seed,
        )
        with Stopwatch() as fed_sw:
            exp = fed.run(body, inside)
        if exp.status != "completed":
            raise SystemExit(f"federation without {held_out} ended {exp.status}")
        outside_name = f"outside_{held_out}"
        agent = fed.add_site(outside_name, unlabelled)
        fed.researcher.grant(exp.id, fed.site_ids[outside_name])
        adapt_cfg = AdaptConfig(steps=setting.adapt_steps, lr=setting.adapt_lr, seed=args.seed)
        # Routed: the agent's own command path (download, build, adapt, save).
        with Stopwatch() as routed_sw:
            _, adapted = adapt_experiment(
                agent.client,
                agent.workdir,
                exp.id,
                unlabelled,
                steps=setting.adapt_steps,
                lr=setting.adapt_lr,
                seed=args.seed,
            )
        report = cast(AdaptReport, adapted)
        bundle = decode_routing_bundle(agent.client.routing_bundle(exp.id))
        routed = _load_routed(agent.workdir.root, exp.id)
        # TENT on the same unlabelled scans, batches and budget as the routed adaptation.
        scans = load_split(
            load_manifest(unlabelled), bundle.spec, SplitName.TEST, train=False, seed=args.seed
        )
        from torch.utils.data import DataLoader

        assert scans is not None  # the adaptation manifest declares a test split

        tent = global_model(bundle.spec, bundle.experts[0])
        tent_report = tent_adapt(tent, DataLoader(scans, batch_size=1, shuffle=False), adapt_cfg)
        models = {
            "global": global_model(bundle.spec, bundle.experts[0]),
            "output average": OutputAverage(bundle.spec, bundle.experts),
            "TENT": tent,
            "routed": routed,
        }
        dice = {m: evals.dice(model, held_out) for m, model in models.items()}
        infer = {m: _infer_ms(model, evals, held_out) for m, model in models.items()}
    return Fold(
        held_out=held_out,
        dice=dice,
        adapt_seconds={
            "routed (adapt only)": report.seconds,
            "routed (whole command)": routed_sw.seconds,
            "TENT": tent_report.seconds,
        },
        infer_ms=infer,
        federation_seconds=fed_sw.seconds,
        experts=[f"{s.source}:{s.name}" for s in bundle.sources],
        mean_mix=report.mean_mix,
    )


def _load_routed(site_work: Path, experiment_id: str) -> Any:
    from site_agent.models import load_model
    from site_agent.workdir import WorkDir

    model, _ = load_model(WorkDir(site_work), "routed", experiment_id=experiment_id)
    return model


def _infer_ms(model: Any, evals: EvalSets, name: str, repeats: int = 2) -> float:
    """Milliseconds per whole test slice: sliding window as in evaluation, argmax (best of
    ``repeats`` passes over the slices)."""
    import torch
    from monai.inferers import sliding_window_inference

    data = evals.data[name]
    images = [data[i]["image"][None] for i in range(len(data))]  # type: ignore[arg-type]
    patch = evals.spec.patch_size

    def segment(x: Any) -> Any:
        return torch.as_tensor(sliding_window_inference(x, patch, 4, model, overlap=0.25)).argmax(
            dim=1
        )

    model.eval()
    best = float("inf")
    with torch.inference_mode():
        segment(images[0])  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            for x in images:
                segment(x)
            best = min(best, time.perf_counter() - t)
    return 1000 * best / len(images)


def _report(
    folds: list[Fold],
    setting: Setting,
    sites: AcdcSites,
    evals: EvalSets,
    inside_of: dict[str, list[str]],
    args: Any,
    total: float,
    cmd: str,
) -> str:
    from deploy.report import markdown_table, report_header

    held = [f.held_out for f in folds]
    dice_rows = [[f.held_out, *(f.dice[m] for m in METHODS)] for f in folds]
    means = {m: mean_or_none(f.dice[m] for f in folds) for m in METHODS}
    dice_rows.append(["mean", *(means[m] for m in METHODS)])
    g_ms = statistics.fmean(f.infer_ms["global"] for f in folds)
    time_rows = []
    for m in METHODS:
        ms = statistics.fmean(f.infer_ms[m] for f in folds)
        adapt = {
            "global": "none",
            "output average": "none",
            "TENT": seconds_str(statistics.fmean(f.adapt_seconds["TENT"] for f in folds)),
            "routed": (
                f"{seconds_str(statistics.fmean(f.adapt_seconds['routed (adapt only)'] for f in folds))}"
                f" ({seconds_str(statistics.fmean(f.adapt_seconds['routed (whole command)'] for f in folds))}"
                " with download, loading and saving)"
            ),
        }[m]
        time_rows.append([m, adapt, f"{ms:.1f}", f"{ms / g_ms:.2f}×"])
    routed_wins = [f.held_out for f in folds if (f.dice["routed"] or 0) > (f.dice["global"] or 0)]
    beats = (means["routed"] or 0) > (means["global"] or 0)
    mix_lines = []
    for f in folds:
        if f.mean_mix:
            first = next(iter(f.mean_mix.values()))
            mix_lines.append(
                f"- held out {f.held_out}: experts {', '.join(f.experts)}; mixing weights of the "
                f"first routed layer after adaptation {[round(w, 3) for w in first]}"
            )
    fed_s = statistics.fmean(f.federation_seconds for f in folds)
    lines = [
        report_header("Outside personalisation on ACDC (leave one hospital out)", cmd),
        "## Setting",
        "",
        f"- Data: ACDC cine MRI, hospitals = diagnosis groups, split by patient. "
        f"{describe_test_sets(sites, held, evals)} The held-out hospital's test scans are "
        "both what it adapts on (images only: the adaptation manifest has no labels) and what "
        "it is scored on afterwards (transductive test-time adaptation, as `fedseg site "
        "adapt` does with a site's test split).",
        f"- Federation per fold: the other {len(next(iter(inside_of.values())))} hospitals, "
        f"IOP-FL inside (alpha {IOPFL_ALPHA}), every site shares its personal model; "
        f"{setting.rounds} rounds × {setting.max_steps} local Adam steps (lr {setting.lr}, "
        f"batch {setting.batch_size}); U-Net channels {ACDC_SPEC.channels}, batch norm; seed "
        f"{args.seed} (experiment and adaptation). Mean federation time per fold: "
        f"{seconds_str(fed_s)}.",
        f"- Adaptation (TENT and routed alike): {setting.adapt_steps} Adam steps, lr "
        f"{setting.adapt_lr}, batch 1 slice (what `fedseg site adapt` loads: 128×128 centre "
        "crops of the test slices, in order), product defaults otherwise (routed: entropy + "
        "augmented-copy consistency + class-proportion prior; TENT: entropy only, batch-norm "
        "statistics of the batch, also at inference).",
        f"- {EVAL_LINE}",
        "- One seed only (the ~10–15 min budget of this 2-core CPU machine). " + SEED_CAVEAT,
        "",
        "## Test Dice at the held-out hospital",
        "",
        markdown_table(["held-out hospital", *METHODS], dice_rows),
        "",
        f"![held-out Dice]({PLOT.name})",
        "",
        "## Cost",
        "",
        markdown_table(
            ["method", "adaptation time (mean per fold)", "inference ms / slice", "vs global"],
            time_rows,
        ),
        "",
        "Inference: one whole test slice by sliding window (128×128 patches, 4 per batch, "
        "overlap 0.25, as in evaluation) + argmax on the CPU, best of two passes over the "
        "test slices, averaged over folds.",
        "",
        "## Verdict",
        "",
        f"- Routed beats the global model on average: **{'yes' if beats else 'no'}** "
        f"({fmt(means['routed'])} vs {fmt(means['global'])}); it is better on "
        f"{len(routed_wins)} of {len(folds)} held-out hospitals"
        + (f" ({', '.join(routed_wins)})." if routed_wins else "."),
        f"- Output average {fmt(means['output average'])}, TENT {fmt(means['TENT'])}.",
        "",
        "## Routing weights",
        "",
        *(mix_lines or ["- (none recorded)"]),
        "",
        f"Total benchmark time: {seconds_str(total)}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
