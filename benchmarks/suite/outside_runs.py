"""Executing one stored run of the outside table on ACDC: one held-out hospital, one seed.

The held-out hospital never takes part in training. The other four hospitals train a federation
with the suite's recipe and IOP-FL inside personalisation (every site shares its personal model,
as an outside site needs), through the real aggregator and site agents in this process. The
held-out hospital then enrolls as an outside site, is granted the experiment and runs ``fedseg
site adapt``'s code on its test scans without labels (download, safe adaptation, the
safeguard's label-free choice). Every outside method of ``benchmarks.outside_methods`` is then
scored on its labelled test scans as ``fedseg site evaluate`` scores them: 3D Dice per volume in
the scan's own geometry.

Splits are those of the inside table for the same seed, so the held-out hospital's test
patients are the ones the inside table scores.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.acdc_common import HOSPITALS, InProcessFederation, acdc_sites, fresh_dir
from benchmarks.suite.acdc_runs import TestSets
from benchmarks.suite.recipe import RunConfig
from data_specs.task_spec import TaskSpec

OUTSIDE_PARAMS: dict[str, Any] = {"alpha": 0.1, "adapt_steps": 60, "adapt_lr": 3e-3}


def outside_method(held_out: str) -> str:
    """The run's method name for a held-out hospital. Example: ``loo_DCM``."""
    return f"loo_{held_out}"


def run_outside(
    cfg: RunConfig, seed: int, work: Path, acdc_dir: Path, device: str = "cpu"
) -> dict[str, Any]:
    """Run one held-out fold (``cfg.params["held_out"]``); returns the record's body."""
    from benchmarks.outside_bench import _unlabelled_copy
    from data_specs.constants import PersonalizationMethod
    from data_specs.researcher.experiments import ExperimentCreate
    from data_specs.wire import PersonalizationConfig, TrainConfig
    from personalization.outside import decode_routing_bundle, global_model
    from site_agent.clinic.adapt import adapt_experiment

    params = cfg.params
    held_out = params["held_out"]
    if held_out not in HOSPITALS:
        raise ValueError(f"unknown held-out hospital {held_out!r}")
    inside = [h for h in HOSPITALS if h != held_out]
    spec = TaskSpec.model_validate(cfg.spec)
    fresh_dir(work)
    sites = acdc_sites(acdc_dir, work / "manifests", seed=seed, **cfg.split)
    manifests = sites.by_name()
    unlabelled = _unlabelled_copy(manifests[held_out], work / "unlabelled")
    tests = TestSets(manifests, spec)
    train = TrainConfig.model_validate(
        {
            **cfg.train,
            "personalization": PersonalizationConfig(
                method=PersonalizationMethod.IOPFL, alpha=params["alpha"]
            ).model_dump(),
        }
    )
    started = time.monotonic()
    with InProcessFederation(work / "federation", device=device) as fed:
        for name in inside:
            fed.add_site(name, manifests[name], share_personal=True)
        body = ExperimentCreate(
            name=f"suite-outside-without-{held_out}",
            spec=spec,
            rounds=cfg.rounds,
            fraction=1.0,
            min_sites=len(inside),
            sites=[fed.site_ids[n] for n in inside],
            train=train,
            round_deadline_s=24 * 3600,
            seed=seed,
        )
        exp = fed.run(body, inside)
        if exp.status != "completed":
            raise RuntimeError(f"federation without {held_out} ended {exp.status}")
        federation_seconds = time.monotonic() - started
        agent = fed.add_site(f"outside_{held_out}", unlabelled)
        fed.researcher.grant(exp.id, fed.site_ids[f"outside_{held_out}"])
        t = time.monotonic()
        _, result = adapt_experiment(
            agent.client,
            agent.workdir,
            exp.id,
            unlabelled,
            steps=params["adapt_steps"],
            lr=params["adapt_lr"],
            seed=seed,
        )
        adapt_command_seconds = time.monotonic() - t
        data = agent.client.routing_bundle(exp.id)
    scored = score_fold(data, unlabelled, tests, held_out, params, seed, softmax_result=result)
    bundle = decode_routing_bundle(data)
    speed = evaluate_vs_infer(
        global_model(bundle.spec, bundle.experts[0]), tests, held_out, manifests
    )
    return {
        "evaluate_vs_infer": speed,
        "held_out": held_out,
        "inside": inside,
        **scored,
        "federation_seconds": round(federation_seconds, 1),
        "adapt_command_seconds": round(adapt_command_seconds, 1),
        "wall_seconds": round(time.monotonic() - started, 1),
        "test_volumes": len(tests.cases(held_out)),
        "train_frames": sites.train_frames,
    }


def score_fold(
    data: bytes,
    unlabelled: Path,
    tests: TestSets,
    held_out: str,
    params: dict[str, Any],
    seed: int,
    softmax_result: Any = None,
) -> dict[str, Any]:
    """Score every outside method on the held-out hospital from its routing bundle ``data``.

    Args:
        data: the routing bundle the outside site downloaded.
        unlabelled: its manifest without labels (what adaptation reads).
        tests: the labelled test sets (3D Dice in the scans' geometry).
        held_out: the held-out hospital.
        params: the run's outside parameters (adaptation steps and lr).
        seed: the run's seed.
        softmax_result: ``fedseg site adapt``'s own result, if it ran; None adapts here.
    """
    import torch

    from benchmarks.outside_methods import score_methods
    from data_specs.weights.routing_bundle import read_class_prior
    from personalization.outside import decode_routing_bundle
    from site_agent.clinic.adapt import adaptation_manifest, unlabelled_scans

    bundle = decode_routing_bundle(data)
    experts = [{k: torch.from_numpy(v.copy()) for k, v in e.items()} for e in bundle.experts]
    scans = unlabelled_scans(adaptation_manifest(unlabelled), bundle.spec, seed=seed)
    full: list[dict[str, Any]] = []

    def dice(model: Any) -> float:
        score = tests.score(model, held_out)
        full.append(score)
        return float(score["dice"])

    scores = score_methods(
        held_out,
        bundle.spec,
        experts,
        [s.name for s in bundle.sources],
        scans,
        dice,
        steps=params["adapt_steps"],
        lr=params["adapt_lr"],
        seed=seed,
        class_prior=read_class_prior(data),
        softmax_result=softmax_result,
    )
    return {
        "models": dict(zip(scores.dice, full, strict=True)),
        "choice": scores.choice,
        "choice_bn": scores.choice_bn,
        "routed_accepted": scores.routed_accepted,
        "message": scores.message,
        "best_expert": scores.best_expert,
        "adapt_seconds": scores.adapt_seconds,
        "adapt_steps": scores.steps,
        "scans": scores.scans,
        "experts": scores.experts,
        "sigmoid_choice": scores.extra.get("sigmoid_choice"),
    }


def rescore_outside(record: dict[str, Any], work: Path) -> dict[str, Any]:
    """The record of a stored fold with its outside methods scored again by today's code.

    The federation is not trained again: the routing bundle the outside site downloaded, the
    manifests and the unlabelled copy are read back from the run's work dir ``work``. The new
    record says so under ``rescored`` (commit and date), next to the original ``commit``.

    Raises:
        FileNotFoundError: the run's work dir no longer holds the bundle or the manifests.
    """
    from datetime import UTC, datetime

    from benchmarks.suite.store import commit

    held_out = record["held_out"]
    spec = TaskSpec.model_validate(record["config"]["spec"])
    bundles = sorted(
        (work / "federation" / "sites" / f"outside_{held_out}" / "routing").glob("*.safetensors")
    )
    if not bundles:
        raise FileNotFoundError(f"no routing bundle of the {held_out} fold under {work}")
    manifests = {p.parent.name: p for p in (work / "manifests").glob("*/dataset.json")}
    by_hospital = {
        h: next(p for n, p in manifests.items() if n.endswith(h.lower())) for h in HOSPITALS
    }
    unlabelled = next((work / "unlabelled").glob("*/dataset.json"))
    tests = TestSets(by_hospital, spec)
    scored = score_fold(
        bundles[0].read_bytes(),
        unlabelled,
        tests,
        held_out,
        record["config"]["params"],
        record["seed"],
    )
    rescored = {"commit": commit(), "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
    return {**record, **scored, "rescored": rescored}


def evaluate_vs_infer(
    model: Any, tests: TestSets, name: str, manifests: dict[str, Path]
) -> dict[str, float]:
    """Seconds of ``fedseg site evaluate``'s path (read, predict, map back, 3D Dice, HD95) and of
    ``fedseg site infer``'s path (read, predict, map back) over one hospital's test scans, with a
    trained model; each path warmed once, then the best of two timed passes."""
    from data_specs.manifests.manifest import load_manifest
    from site_agent.clinic.inference import segment_scan
    from site_agent.clinic.scan_evaluation import evaluate_cases, load_eval_cases

    manifest = load_manifest(manifests[name])
    scans = [manifest.resolve(c).image for c in manifest.iter_cases("test")]

    def evaluate() -> None:
        evaluate_cases(model, load_eval_cases(manifest, tests.spec, "test"), tests.spec)

    def infer() -> None:
        for scan in scans:
            segment_scan(model, tests.spec, scan)

    best: dict[str, float] = {}
    for label, fn in (("evaluate_s", evaluate), ("infer_s", infer)):
        fn()
        times = []
        for _ in range(2):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        best[label] = round(min(times), 2)
    best["ratio"] = round(best["evaluate_s"] / best["infer_s"], 2)
    best["volumes"] = len(scans)
    return best
