"""IOP-FL outside personalisation: every outside-site method on three cases (issues 7 and 13).

``python -m benchmarks.outside_bench [--quick] [--case acdc,shift,rgb] [--seeds 0,1,2]`` writes
``benchmarks/results/outside.md`` (ACDC), ``outside_shift.md`` and ``outside_rgb.md`` (the
synthetic cases, ``benchmarks.outside_synth``), each with a bar plot.

ACDC (``--case acdc``, the default): for each hospital in turn, a federation of the other four
trains with IOP-FL inside personalisation (every site shares its personal model,
``share_personal``), in-process through the real aggregator and site agents. The held-out
hospital then enrolls as an outside site, is granted the experiment, and runs ``fedseg site
adapt``'s code (``adapt_experiment``: download, safe adaptation, the safeguard's choice). On its
test scans it scores every method of ``benchmarks.outside_methods``: global, best single expert
(label-free), output average, TENT, routed (softmax and sigmoid gates) and the safeguard's
final choice.

Adaptation sees only images: it reads a manifest whose test cases carry no label at all; Dice
is computed afterwards against the labelled manifest.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
from benchmarks.outside_methods import (
    GUARD_HEADER,
    METHODS,
    MethodScores,
    result_rows,
    score_methods,
    time_100_scans,
)

NAME = "outside_bench"
REPORT = RESULTS / "outside.md"
PLOT = RESULTS / "outside_dice.png"
CASES = ("acdc", "shift", "rgb")


@dataclass(frozen=True)
class Setting:
    """Federation and adaptation budget (the inside benchmark's federation budget)."""

    rounds: int
    max_steps: int
    adapt_steps: int
    held_out: tuple[str, ...] = HOSPITALS
    batch_size: int = 8
    lr: float = 3e-3
    adapt_lr: float = 3e-3
    test_frac: float = 0.25


FULL = Setting(rounds=10, max_steps=20, adapt_steps=60)
QUICK = Setting(rounds=1, max_steps=2, adapt_steps=3, held_out=HOSPITALS[:1], test_frac=0.05)
IOPFL_ALPHA = 0.1


def _own_options(argv: list[str] | None) -> tuple[list[str], list[str], list[int]]:
    """Split ``--case`` and ``--seeds`` off the shared benchmark options."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--case", default="acdc")
    parser.add_argument("--seeds", default=None)
    own, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    cases = [c.strip() for c in own.case.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"--case takes {', '.join(CASES)} (comma-separated), got {unknown}")
    seeds = [int(x) for x in own.seeds.split(",")] if own.seeds else []
    return rest, cases, seeds


def main(argv: list[str] | None = None) -> None:
    rest, cases, seeds = _own_options(argv)
    args = parse_args(NAME, __doc__, rest)
    cmd = command_line(NAME, argv)
    for case in cases:
        if case == "acdc":
            run_acdc(args, cmd)
        else:
            run_synthetic(case, args, seeds or [args.seed], cmd)


def run_acdc(args: Any, cmd: str) -> None:
    """Leave one ACDC hospital out, in turn; write ``outside.md``."""
    setting = QUICK if args.quick else FULL
    started = time.monotonic()
    work = fresh_dir(args.work_dir / "acdc")
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
    timing = time_100_scans(ACDC_SPEC, scans=10 if args.quick else 100)
    total = time.monotonic() - started
    (work / "folds.json").write_text(json.dumps([asdict(f) for f in folds], indent=2))
    from deploy.launcher.report import write_report

    _plot(folds, PLOT, "ACDC held-out hospital: test Dice")
    text = _report_acdc(folds, setting, sites, evals, inside_of, args, total, cmd, timing)
    write_report(REPORT, text)
    print(f"report written to {REPORT} and {PLOT} ({seconds_str(total)})")


def run_synthetic(case: str, args: Any, seeds: list[int], cmd: str) -> None:
    """One synthetic case (``benchmarks.outside_synth``) over ``seeds``; write its report."""
    from benchmarks.outside_synth import QUICK as SYNTH_QUICK
    from benchmarks.outside_synth import SETTINGS, run_case
    from deploy.launcher.report import write_report

    setting = (SYNTH_QUICK if args.quick else SETTINGS)[case]  # type: ignore[index]
    started = time.monotonic()
    report = RESULTS / f"outside_{case}.md"
    plot = RESULTS / f"outside_{case}_dice.png"
    title = {
        "shift": "Outside hospital with a strong shift (synthetic)",
        "rgb": "Outside institution, 2D RGB photographs (synthetic)",
    }[case]
    folds: list[MethodScores] = []
    for seed in seeds:
        work = fresh_dir(args.work_dir / f"{case}_seed{seed}")
        fold = run_case(case, setting, seed, work)  # type: ignore[arg-type]
        folds.append(fold)
        print(f"{fold.held_out}: " + ", ".join(f"{m} {fmt(fold.dice[m])}" for m in METHODS))
        (work / "fold.json").write_text(json.dumps(asdict(fold), indent=2))
        # Rewritten after every seed: a long run that is stopped still leaves its report.
        total = time.monotonic() - started
        done = seeds[: len(folds)]
        _plot(folds, plot, f"{title}: Dice")
        write_report(report, _report_synth(case, title, folds, setting, done, total, cmd, plot))
    print(f"report written to {report} ({seconds_str(time.monotonic() - started)})")


def _plot(folds: list[MethodScores], path: Path, title: str) -> None:
    from deploy.launcher.report import plot_grouped_bars

    table = {f.held_out: dict(f.dice) for f in folds}
    table["mean"] = {m: mean_or_none(f.dice[m] for f in folds) for m in METHODS}
    plot_grouped_bars(table, path, title=title)


def _unlabelled_copy(manifest_path: Path, out: Path) -> Path:
    """The hospital's manifest with its test cases stripped of labels (what adaptation reads)."""
    from data_specs.manifests.manifest import CaseEntry, load_manifest, save_manifest

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
) -> MethodScores:
    import torch

    from data_specs.constants import OptimizerName, PersonalizationMethod
    from data_specs.researcher.experiments import ExperimentCreate
    from data_specs.weights.routing_bundle import read_class_prior
    from data_specs.wire import PersonalizationConfig, TrainConfig
    from personalization.outside import decode_routing_bundle
    from site_agent.clinic.adapt import adapt_experiment, adaptation_manifest, unlabelled_scans

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
        # The agent's own command path: download, safe adaptation, choice, save.
        with Stopwatch() as cmd_sw:
            _, result = adapt_experiment(
                agent.client,
                agent.workdir,
                exp.id,
                unlabelled,
                steps=setting.adapt_steps,
                lr=setting.adapt_lr,
                seed=args.seed,
            )
        data = agent.client.routing_bundle(exp.id)
    bundle = decode_routing_bundle(data)
    experts = [{k: torch.from_numpy(v.copy()) for k, v in e.items()} for e in bundle.experts]
    scans = unlabelled_scans(adaptation_manifest(unlabelled), bundle.spec, seed=args.seed)
    scores = score_methods(
        held_out,
        bundle.spec,
        experts,
        [s.name for s in bundle.sources],
        scans,
        lambda model: evals.dice(model, held_out),
        steps=setting.adapt_steps,
        lr=setting.adapt_lr,
        seed=args.seed,
        class_prior=read_class_prior(data),
        softmax_result=result,
    )
    scores.extra.update(
        federation_seconds=round(fed_sw.seconds, 1), adapt_command_seconds=round(cmd_sw.seconds, 1)
    )
    return scores


def _verdict(folds: list[MethodScores]) -> list[str]:
    from benchmarks.outside_methods import delta

    means = {m: mean_or_none(f.dice[m] for f in folds) for m in METHODS}
    worst = [d for f in folds if (d := delta(f, "safeguard")) is not None]
    worst_routed = [d for f in folds if (d := delta(f, "routed softmax")) is not None]
    lines = [
        f"- Safeguard − global, worst held-out site: **{min(worst):+.1f} points** (goal ≥ −1)"
        if worst
        else "- Safeguard − global: no figure",
        f"- Routed (softmax) − global, worst held-out site: {min(worst_routed):+.1f} points; "
        "mean "
        + (f"{100 * ((means['routed softmax'] or 0) - (means['global'] or 0)):+.1f} points"),
        "- Means: " + ", ".join(f"{m} {fmt(means[m])}" for m in METHODS) + ".",
        "- Routed softmax vs TENT (mean): "
        + (
            "routed ≥ TENT"
            if (means["routed softmax"] or 0) >= (means["TENT"] or 0)
            else "routed < TENT"
        )
        + f" ({fmt(means['routed softmax'])} vs {fmt(means['TENT'])}).",
    ]
    return lines


def _messages(folds: list[MethodScores]) -> list[str]:
    return [f"- {f.held_out}: {f.message}" for f in folds]


def _tables(folds: list[MethodScores]) -> list[str]:
    from deploy.launcher.report import markdown_table

    dice_rows, guard_rows = result_rows(folds)
    return [
        "## Test Dice at the held-out site",
        "",
        markdown_table(["held-out site", *METHODS], dice_rows),
        "",
        "## The safeguard per held-out site",
        "",
        markdown_table(GUARD_HEADER, guard_rows),
        "",
        "What `fedseg site adapt` said:",
        "",
        *_messages(folds),
        "",
    ]


METHOD_LINES = [
    "- Methods: **global** (expert 0 with the federation's batch-norm statistics); **best "
    "expert** (the bundle model with the best label-free score, with its chosen batch-norm "
    "statistics); **output average** (softmax mean of every expert); **TENT** (entropy "
    "minimisation of the global model's norm layers, batch statistics, lr 1e-3); **routed "
    "softmax / sigmoid** (the adapted routed model of each gate, with its chosen batch-norm "
    "statistics); **safeguard** (what `fedseg site adapt` hands the site: the routed model, or "
    "its label-free fallback among the global model and the best expert).",
    "- Label-free score (`personalization.outside.site_score`): foreground soft Dice between "
    "the prediction on the scans and on their flipped copy, minus the normalised entropy; a "
    "routed model is rejected when its score is below every expert's or its predicted "
    "foreground share leaves the experts' range (×/÷ 2).",
]


def _report_acdc(
    folds: list[MethodScores],
    setting: Setting,
    sites: AcdcSites,
    evals: EvalSets,
    inside_of: dict[str, list[str]],
    args: Any,
    total: float,
    cmd: str,
    timing: dict[str, Any],
) -> str:
    from deploy.launcher.report import report_header

    held = [f.held_out for f in folds]
    fed_s = statistics.fmean(f.extra["federation_seconds"] for f in folds)
    lines = [
        report_header("Outside personalisation on ACDC (leave one hospital out)", cmd),
        "## Setting",
        "",
        f"- Data: ACDC cine MRI, hospitals = diagnosis groups, split by patient. "
        f"{describe_test_sets(sites, held, evals)} The held-out hospital's test scans are "
        "both what it adapts on (images only: the adaptation manifest has no labels) and what "
        "it is scored on afterwards (transductive test-time adaptation).",
        f"- Federation per fold: the other {len(next(iter(inside_of.values())))} hospitals, "
        f"IOP-FL inside (alpha {IOPFL_ALPHA}), every site shares its personal model; "
        f"{setting.rounds} rounds × {setting.max_steps} local Adam steps (lr {setting.lr}, "
        f"batch {setting.batch_size}); U-Net channels {ACDC_SPEC.channels}, batch norm; seed "
        f"{args.seed}. Mean federation time per fold: {seconds_str(fed_s)}.",
        f"- Adaptation: at most {setting.adapt_steps} steps (early stopping), lr "
        f"{setting.adapt_lr} (routed), batches of 4 of the 128×128 centre crops that `fedseg "
        "site adapt` loads.",
        *METHOD_LINES,
        f"- {EVAL_LINE}",
        "- One seed only. " + SEED_CAVEAT,
        "",
        *_tables(folds),
        f"![held-out Dice]({PLOT.name})",
        "",
        "## Verdict",
        "",
        *_verdict(folds),
        "",
        "## Adaptation time",
        "",
        f"- `safe_adapt` with product defaults over {timing['scans']} scans of 128×128 and "
        f"{timing['experts']} experts of the ACDC U-Net, CPU, {timing['threads']} thread(s): "
        f"**{timing['seconds']} s** wall, {timing['cpu_seconds']} s of CPU time "
        f"({timing['steps']} adaptation steps; random experts and "
        "scans, so the early stop can differ from real data). Goal: ≤ 60 s for 100 scans.",
        "",
        f"Total benchmark time: {seconds_str(total)}.",
    ]
    return "\n".join(lines)


def _report_synth(
    case: str,
    title: str,
    folds: list[MethodScores],
    setting: Any,
    seeds: list[int],
    total: float,
    cmd: str,
    plot: Path,
) -> str:
    from benchmarks.outside_synth import case_spec
    from deploy.launcher.report import report_header

    spec = case_spec(case, setting)  # type: ignore[arg-type]
    data = {
        "shift": f"`synthesize(sites={setting.sites}, cases={setting.cases}, size={setting.size}, "
        f"classes={setting.classes}, outside=1, outside_shift=True)`: {setting.sites} hospitals "
        "train; the outside hospital has a strong shift (another intensity curve, contrast "
        "inversion, blur sigma ≥ 1.6, acquisition resolution ÷3).",
        "rgb": f"`synthesize(sites=1, cases={setting.cases}, size={setting.size}, classes=1, "
        "outside=1, rgb=True)` (`fedseg data synth --rgb`): 2D RGB PNG photographs with binary "
        "masks; one institution trains, a second one (its own colour cast, intensity curve, "
        "blur and resolution) adapts.",
    }[case]
    fed = statistics.fmean(f.extra["federation_seconds"] for f in folds)
    lines = [
        report_header(title, cmd),
        "## Setting",
        "",
        f"- Data: {data} The outside site adapts from a manifest holding only an `adaptation` "
        f"list of images; Dice is computed on all of its {folds[0].extra['test_cases']} "
        "cases with their labels afterwards.",
        f"- Federation: IOP-FL inside (alpha 0.1), personal models shared; {setting.rounds} "
        f"rounds × {setting.max_steps} local Adam steps (lr {setting.lr}, batch "
        f"{setting.batch_size}); U-Net channels {spec.channels}, batch norm, patch "
        f"{spec.patch_size}. Mean federation time: {seconds_str(fed)}.",
        f"- Adaptation: at most {setting.adapt_steps} steps, lr {setting.adapt_lr}; seeds "
        f"{', '.join(map(str, seeds))} (each seed draws new data, federation and adaptation).",
        *METHOD_LINES,
        "- Dice: mean foreground Dice over whole images (`evaluate_segmentation`).",
        "",
        *_tables(folds),
        f"![Dice]({plot.name})",
        "",
        "## Verdict",
        "",
        *_verdict(folds),
        "",
        f"Total benchmark time: {seconds_str(total)}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
