"""``python -m benchmarks.suite run|report``: run the missing ACDC runs, then build the reports.

Examples::

    python -m benchmarks.suite run --table inside --seeds 0            # what is missing, then report
    python -m benchmarks.suite run --methods fedavg_iopfl central --budget-minutes 12
    python -m benchmarks.suite run --table outside --seeds 0           # leave one hospital out
    python -m benchmarks.suite run --table outside --methods loo_DCM   # one held-out fold
    python -m benchmarks.suite run --table reference                   # the reference script
    python -m benchmarks.suite run --device cuda --seeds 0 1 2         # on a GPU machine
    python -m benchmarks.suite report                                  # reports from stored runs
"""

from __future__ import annotations

import argparse
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks.acdc_common import default_acdc_dir
from benchmarks.suite.recipe import RECIPE_TRAIN, RunConfig, recipe_spec_json, rounds_for
from benchmarks.suite.store import has_run, run_path, save_run

INSIDE_ORDER = ("fedavg_iopfl", "central", "local", "fedbn", "fedprox", "ditto")


def inside_configs(budget_minutes: float, methods: list[str] | None = None) -> list[RunConfig]:
    """The inside table's run configurations at a budget."""
    from benchmarks.suite.acdc_runs import INSIDE_METHODS

    rounds = rounds_for(budget_minutes)
    chosen = methods or list(INSIDE_ORDER)
    return [
        RunConfig(
            table="inside",
            method=m,
            rounds=rounds,
            spec=recipe_spec_json(),
            train=dict(RECIPE_TRAIN),
            params=dict(INSIDE_METHODS[m][1]),
        )
        for m in chosen
    ]


def outside_configs(budget_minutes: float, methods: list[str] | None = None) -> list[RunConfig]:
    """The outside table's run configurations: one per held-out hospital."""
    from benchmarks.acdc_common import HOSPITALS
    from benchmarks.suite.outside_runs import OUTSIDE_PARAMS, outside_method

    rounds = rounds_for(budget_minutes)
    configs = [
        RunConfig(
            table="outside",
            method=outside_method(h),
            rounds=rounds,
            spec=recipe_spec_json(),
            train=dict(RECIPE_TRAIN),
            params={**OUTSIDE_PARAMS, "held_out": h},
        )
        for h in HOSPITALS
    ]
    return [c for c in configs if not methods or c.method in methods]


def configs_for(table: str, budget_minutes: float, methods: list[str] | None) -> list[RunConfig]:
    """The run configurations of ``table`` (``inside``, ``outside`` or ``reference``)."""
    if table == "reference":
        from benchmarks.suite.reference_runs import REFERENCE_METHODS, reference_config

        chosen = methods or list(REFERENCE_METHODS)
        return [reference_config(m, rounds_for(budget_minutes)) for m in chosen]
    if table == "outside":
        return outside_configs(budget_minutes, methods)
    return inside_configs(budget_minutes, methods)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the missing runs, then write the reports")
    run.add_argument("--table", choices=["inside", "outside", "reference"], default="inside")
    run.add_argument("--methods", nargs="*", default=None)
    run.add_argument("--seeds", nargs="*", type=int, default=[0])
    run.add_argument("--budget-minutes", type=float, default=12.0)
    run.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    run.add_argument("--acdc-dir", type=Path, default=default_acdc_dir())
    run.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "fedseg_suite")
    run.add_argument("--dry-run", action="store_true", help="list the missing runs only")
    sub.add_parser("report", help="write the reports from every stored run")
    rescore = sub.add_parser(
        "rescore",
        help="score the stored outside folds' methods again with today's code, from the "
        "routing bundles left in their work dirs (no federation is trained again)",
    )
    rescore.add_argument("--methods", nargs="*", default=None)
    rescore.add_argument(
        "--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "fedseg_suite"
    )
    args = parser.parse_args(argv)
    if args.command == "report":
        from benchmarks.suite.report import write_reports

        for path in write_reports():
            print(f"wrote {path}")
        return 0
    if args.command == "rescore":
        return _rescore(args.work_dir, args.methods)
    configs = configs_for(args.table, args.budget_minutes, args.methods)
    if not configs:
        parser.error(f"no run of the {args.table} table matches --methods {args.methods}")
    todo = [(c, s) for s in args.seeds for c in configs if not has_run(c, s)]
    print(f"{len(todo)} run(s) missing of {len(configs) * len(args.seeds)}")
    failures = 0
    for cfg, seed in todo:
        print(
            f"- {cfg.table}/{cfg.method} seed {seed} ({cfg.rounds} rounds) -> {run_path(cfg, seed).name}"
        )
        if args.dry_run:
            continue
        from benchmarks.suite.acdc_runs import run_inside
        from benchmarks.suite.outside_runs import run_outside
        from benchmarks.suite.reference_runs import run_reference

        runner = {"outside": run_outside, "reference": run_reference}.get(cfg.table, run_inside)
        t = time.monotonic()
        try:
            work = args.work_dir / f"{cfg.table}-{cfg.method}-{seed}"
            body = runner(cfg, seed, work, args.acdc_dir, args.device)
        except Exception:  # one failed run must not lose the others; it stays missing
            failures += 1
            traceback.print_exc()
            continue
        path = save_run(cfg, seed, body, device=args.device)
        print(f"  stored {path} ({(time.monotonic() - t) / 60:.1f} min)")
    if not args.dry_run:
        from benchmarks.suite.report import write_reports

        for path in write_reports():
            print(f"wrote {path}")
    return 1 if failures else 0


def _rescore(work_dir: Path, methods: list[str] | None) -> int:
    import json

    from benchmarks.suite.outside_runs import rescore_outside
    from benchmarks.suite.report import write_reports
    from benchmarks.suite.store import RUNS
    from data_specs.files import atomic_write_text

    failures = 0
    for path in sorted((RUNS / "outside").glob("*.json")):
        record = json.loads(path.read_text())
        method = record["config"]["method"]
        if methods and method not in methods:
            continue
        work = work_dir / f"outside-{method}-{record['seed']}"
        try:
            new = rescore_outside(record, work)
        except FileNotFoundError as exc:
            failures += 1
            print(f"- {path.name}: not rescored: {exc}")
            continue
        atomic_write_text(path, json.dumps(new, indent=1, sort_keys=True))
        print(f"- {path.name}: rescored (choice {new['choice']})")
    for written in write_reports():
        print(f"wrote {written}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
