"""Executing one stored run of the inside table on ACDC (five hospitals, through ``fedseg simulate``).

Every federated method runs through ``deploy.launcher.simulation.run_simulation`` (the real aggregator and
site agents, in-process) with the suite's recipe; every model is then scored on each hospital's
test patients as ``fedseg site evaluate`` scores it: whole scans predicted through the inference
path and compared in their own geometry (3D Dice per volume, HD95).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

from benchmarks.acdc_common import HOSPITALS, acdc_sites, fresh_dir, round_models, site_model
from benchmarks.suite.recipe import RunConfig
from data_specs.task_spec import TaskSpec

DP_CLIP: dict[str, Any] = {"dp_delta": 1e-5, "clip_init": 1.0, "target_quantile": 0.5}

# method -> (personalization, extra SimulationConfig fields, models it yields)
INSIDE_METHODS: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "central": ("none", {}, ("global",)),
    "local": ("none", {}, ("global",)),
    "fedavg_iopfl": ("iopfl", {"alpha": 0.1}, ("global", "personal")),
    "fedprox": ("fedprox", {"fedprox_mu": 0.01}, ("global",)),
    "fedbn": ("fedbn", {}, ("personal",)),
    "ditto": ("ditto", {"ditto_lambda": 0.1}, ("global", "personal")),
    # client-level DP-FedAvg, central noise, adaptive clipping (Andrew et al. 2021, median)
    "fedavg_dp8": ("none", {"dp_epsilon": 8.0, **DP_CLIP}, ("global",)),
    "fedavg_dp1000": ("none", {"dp_epsilon": 1000.0, **DP_CLIP}, ("global",)),
    # the same clipping with noise far below any guarantee: what clipping alone costs
    "fedavg_clip": ("none", {"dp_noise_multiplier": 1e-3, **DP_CLIP}, ("global",)),
}


def privacy_of(params: dict[str, Any], rounds: int) -> tuple[dict[str, Any], Any]:
    """Split a method's parameters into SimulationConfig fields and its ``PrivacyConfig``.

    ``dp_epsilon`` asks for the smallest noise multiplier that keeps every round within that
    (ε, ``dp_delta``) budget (every hospital every round: sampling rate 1, no amplification);
    ``dp_noise_multiplier`` sets it directly. Clipping is adaptive from ``clip_init`` toward the
    ``target_quantile`` of the sites' update norms.
    """
    from data_specs.privacy import DPConfig, PrivacyConfig
    from data_specs.privacy.accountant import noise_for_budget
    from data_specs.privacy.config import AdaptiveClipConfig

    rest = {k: v for k, v in params.items() if not k.startswith(("dp_", "clip_", "target_"))}
    if "dp_epsilon" not in params and "dp_noise_multiplier" not in params:
        return rest, None
    delta = params["dp_delta"]
    eps = params.get("dp_epsilon")
    z = params.get("dp_noise_multiplier")
    if z is None:
        z = noise_for_budget(1.0, rounds, delta, params["dp_epsilon"])
    dp = DPConfig(
        clip_norm=params["clip_init"],
        noise_multiplier=z,
        delta=delta,
        epsilon_budget=eps,
        adaptive=AdaptiveClipConfig(target_quantile=params["target_quantile"]),
    )
    return rest, PrivacyConfig(dp=dp)


class TestSets:
    """Each hospital's test scans, prepared once per process and reused for every model."""

    def __init__(self, manifests: dict[str, Path], spec: TaskSpec) -> None:
        self.manifests, self.spec = manifests, spec

    @functools.cache  # noqa: B019 - one instance per benchmark process
    def cases(self, name: str) -> list[Any]:
        from data_specs.manifests.manifest import load_manifest
        from site_agent.clinic.scan_evaluation import load_eval_cases

        return load_eval_cases(load_manifest(self.manifests[name]), self.spec, "test")

    def score(self, model: Any, name: str, *, hd95: bool = True) -> dict[str, Any]:
        """Dice per class, mean Dice, HD95 and per-volume Dice of ``model`` on hospital ``name``."""
        from site_agent.clinic.scan_evaluation import evaluate_cases

        r = evaluate_cases(model, self.cases(name), self.spec, hd95=hd95)
        return {
            "dice": r.mean_dice,
            "dice_per_class": r.dice_per_class,
            "hd95": r.hd95,
            "case_dice": r.case_dice,
            "n": r.num_cases,
        }


def run_inside(
    cfg: RunConfig, seed: int, work: Path, acdc_dir: Path, device: str = "cpu"
) -> dict[str, Any]:
    """Run one method of the inside table and score its models; returns the record's body."""
    from deploy.launcher.simulation import SimulationConfig, run_simulation

    personalization, extra, kinds = INSIDE_METHODS[cfg.method]
    spec = TaskSpec.model_validate(cfg.spec)
    fresh_dir(work)
    sites = acdc_sites(acdc_dir, work / "manifests", seed=seed, **cfg.split)
    manifests = sites.by_name()
    tests = TestSets(manifests, spec)
    train = dict(cfg.train)
    extra, privacy = privacy_of(extra, cfg.rounds)
    base: dict[str, Any] = {
        "spec": spec,
        "rounds": cfg.rounds,
        "local_epochs": train.pop("local_epochs"),
        "batch_size": train.pop("batch_size"),
        "lr": train.pop("lr"),
        "optimizer": train.pop("optimizer"),
        "seed": seed,
        "evaluate": False,
        "personalization": personalization,
        "train_overrides": train,
        "device": device,
        "privacy": privacy,
        **extra,
    }
    started = time.monotonic()
    models: dict[str, dict[str, Any]] = {k: {} for k in kinds}
    curves: dict[str, list[dict[str, Any]]] = {}
    if cfg.method == "local":
        sim_seconds = 0.0
        for name, path in manifests.items():
            res = run_simulation(SimulationConfig(manifests=[path], out_dir=work / name, **base))
            _check(res, f"local {name}")
            sim_seconds += res.seconds
            curves[name] = _curve(res, tests, [name], cfg.rounds)
            final = round_models(res)[cfg.rounds]
            model = site_model(
                Path(res.out_dir) / "sites" / "site_0", "global", res.experiment_id, final
            )
            models["global"][name] = tests.score(model, name)
    else:
        kw = dict(base)
        if cfg.method == "central":
            kw.update(partition="iid", num_sites=1)
        res = run_simulation(
            SimulationConfig(manifests=list(manifests.values()), out_dir=work / "run", **kw)
        )
        _check(res, cfg.method)
        closed = [r for r in res.rounds if r["status"] == "closed"]
        spent = closed[-1].get("privacy") if closed and privacy is not None else None
        sim_seconds = res.seconds
        names = list(manifests)
        curves["all"] = _curve(res, tests, names, cfg.rounds)
        final = round_models(res)[cfg.rounds]
        for i, name in enumerate(names):
            site = 0 if cfg.method == "central" else i
            work_dir = Path(res.out_dir) / "sites" / f"site_{site}"
            if "global" in kinds:
                model = site_model(work_dir, "global", res.experiment_id, final)
                models["global"][name] = tests.score(model, name)
            if "personal" in kinds:
                model = site_model(work_dir, "personal", res.experiment_id)
                models["personal"][name] = tests.score(model, name)
    return {
        **({"privacy": spent} if cfg.method != "local" and spent else {}),
        "models": models,
        "curves": curves,
        "sim_seconds": sim_seconds,
        "wall_seconds": time.monotonic() - started,
        "test_volumes": {h: len(tests.cases(h)) for h in HOSPITALS},
        "train_frames": sites.train_frames,
    }


def _curve(res: Any, tests: TestSets, names: list[str], rounds: int) -> list[dict[str, Any]]:
    """Mean test Dice of the global model every few rounds (about 10 points per run)."""
    every = max(1, rounds // 10)
    files = round_models(res)
    points = []
    for r in sorted(files):
        if r % every and r != rounds:
            continue
        site0 = Path(res.out_dir) / "sites" / "site_0"
        model = site_model(site0, "global", res.experiment_id, files[r])
        per = {n: tests.score(model, n, hd95=False)["dice"] for n in names}
        points.append({"round": r, "dice": sum(per.values()) / len(per), "per_site": per})
    return points


def _check(res: Any, what: str) -> None:
    if res.status != "completed":
        raise RuntimeError(f"{what}: experiment {res.experiment_id} ended {res.status}")
