"""``fedseg simulate``: classic FedAvg experiments through the real aggregator and agent code.

The aggregator app runs in this process behind FastAPI's in-memory transport (its orchestrator
loop included) and every virtual site is a real ``SiteAgent`` talking to it over that transport,
so a simulation exercises the same code that runs in hospitals: enrollment, long polls, bundle
checks, update validation, aggregation, personal models. Sites train one after another.
With ``backend="ray"`` the sites are Ray actors talking HTTP to a uvicorn server instead
(``deploy.launcher.ray_backend``); the experiment and its models are the same.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from rich.console import Console

from data_specs.constants import LogLevel, OptimizerName, PersonalizationMethod
from data_specs.files import atomic_write_bytes, atomic_write_text
from data_specs.privacy import PrivacyConfig
from data_specs.researcher.experiments import ExperimentCreate, StrategyConfig
from data_specs.sources.partition import PartitionScheme, partition_manifests, write_partition
from data_specs.task_spec import TaskSpec
from data_specs.wire import CodecConfig, PersonalizationConfig, TrainConfig
from deploy.console.researcher_client import ResearcherClient
from deploy.console.round_progress import RoundProgress
from deploy.launcher.ray_backend import RayOptions

_PERSONAL = PersonalizationConfig()


@dataclass
class SimulationConfig:
    """One simulated experiment (McMahan et al.'s knobs plus fedseg's).

    Args:
        manifests: source manifests. Example: ``[Path("data/site_1/dataset.json"), ...]``.
        out_dir: results folder (recreated). Example: ``Path("runs/iid")``.
        spec: task spec. Default a small 2D U-Net for 4 classes at 32×32.
        partition: ``natural`` (one site per manifest), ``iid``, ``noniid``, ``noniid-unequal``.
        num_sites: virtual sites (ignored for ``natural``). Default 4.
        fraction: C, fraction of sites per round. Default 1.0.
        local_epochs: E. Default 1.
        batch_size: B. Default 8.
        lr: learning rate. Default 3e-3.
        optimizer: ``sgd`` or ``adam``. Default ``adam``.
        rounds: federated rounds. Default 5.
        strategy: aggregation strategy name. Default ``fedavg``.
        strategy_params: its parameters. Default {}.
        personalization: a ``PersonalizationMethod``. Default ``none`` (plain FedAvg).
        alpha, ditto_lambda: as ``PersonalizationConfig`` (its defaults).
        fedprox_mu: FedProx mu. Default 0.
        codec: update codec config. Default none.
        max_steps: cap on local optimiser steps per round. Default None.
        seed: seed of partition, sampling and training. Default 0.
        evaluate: evaluate final global (and personal) models on each site's test split.
        device: ``cpu``, ``cuda`` or ``auto`` for every site. Default ``cpu``.
        train_overrides: further ``TrainConfig`` fields (the training recipe: ``lr_schedule``,
            ``precision``, ``persist_optimizer``, ...). Example: ``{"lr_schedule": "poly"}``.
        privacy: client-level DP options (``docs/privacy.md``). Default None.
        backend: ``inprocess`` (sites in turn, in this process, over the in-memory transport)
            or ``ray`` (one Ray actor per site over HTTP; ``deploy.launcher.ray_backend``).
        ray: the Ray backend's address and per-site resources. Default None (local Ray, 1 CPU).
    """

    manifests: list[Path]
    out_dir: Path
    spec: TaskSpec = field(
        default_factory=lambda: TaskSpec(out_channels=4, channels=(8, 16, 32), strides=(2, 2))
    )
    partition: str = "natural"
    num_sites: int = 4
    fraction: float = 1.0
    local_epochs: int = 1
    batch_size: int = 8
    lr: float = 3e-3
    optimizer: str = "adam"
    rounds: int = 5
    strategy: str = "fedavg"
    strategy_params: dict[str, Any] = field(default_factory=dict)
    personalization: str = PersonalizationMethod.NONE  # the simulation's baseline: FedAvg
    alpha: float = _PERSONAL.alpha
    fedprox_mu: float = 0.0
    ditto_lambda: float = _PERSONAL.ditto_lambda
    codec: CodecConfig = field(default_factory=CodecConfig)
    max_steps: int | None = None
    seed: int = 0
    evaluate: bool = True
    train_overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    privacy: PrivacyConfig | None = None
    backend: str = "inprocess"
    ray: RayOptions | None = None


@dataclass
class SimulationResult:
    """What a simulation produced (also written as ``results.json``)."""

    experiment_id: str
    status: str
    rounds: list[dict[str, Any]]
    final_dice: dict[str, dict[str, float | None]]
    seconds: float
    bytes_up: int
    bytes_down: int
    out_dir: str


def run_simulation(cfg: SimulationConfig, console: Console | None = None) -> SimulationResult:
    """Run one experiment in-process and write results.json, plots and TensorBoard logs."""
    import warnings

    warnings.filterwarnings("ignore", message="Using `httpx` with")
    from fastapi.testclient import TestClient

    from aggregator.api.app import create_app
    from aggregator.settings import AggregatorSettings
    from data_specs.manifests.manifest import load_manifest

    console = console or Console()
    t0 = time.monotonic()
    out = cfg.out_dir.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    sources = [load_manifest(p) for p in cfg.manifests]
    sites = partition_manifests(sources, cfg.partition, cfg.num_sites, seed=cfg.seed)
    if PartitionScheme(cfg.partition) == PartitionScheme.NATURAL:
        manifest_paths = list(cfg.manifests)
    else:
        manifest_paths = write_partition(sites, out / "partition")
    admin = secrets.token_urlsafe(32)
    settings = AggregatorSettings(
        data_dir=out / "aggregator",
        admin_token=SecretStr(admin),
        orchestrator_interval_s=0.1,
        log_level=LogLevel.WARNING,
        max_long_poll_s=5.0,
    )
    if cfg.backend == "ray":
        from deploy.launcher.ray_backend import RayOptions, aggregator_host, served, start_ray

        options = cfg.ray or RayOptions()
        start_ray(options)
        app = create_app(settings)
        with (
            served(app, aggregator_host(options)) as url,
            httpx.Client(base_url=url, timeout=120) as http,
        ):
            fed = _federate(cfg, http, url, manifest_paths, out, admin, console)
    else:
        with TestClient(create_app(settings)) as tc:
            fed = _federate(cfg, tc, "http://testserver", manifest_paths, out, admin, console)
    exp, final, rounds, dice, progress = fed
    result = SimulationResult(
        experiment_id=exp.id,
        status=final.status,
        rounds=rounds,
        final_dice=dice,
        seconds=time.monotonic() - t0,
        bytes_up=progress.bytes_up,
        bytes_down=progress.bytes_down,
        out_dir=str(out),
    )
    _write_outputs(result, progress, cfg, out)
    return result


def _federate(
    cfg: SimulationConfig,
    http: httpx.Client,
    url: str,
    manifest_paths: list[Path],
    out: Path,
    admin: str,
    console: Console,
) -> tuple[Any, Any, list[dict[str, Any]], dict[str, dict[str, float | None]], RoundProgress]:
    """Create the researcher, sites and experiment on the aggregator at ``url`` and run it."""
    from site_agent.federation.loop import SiteAgent

    researcher = ResearcherClient(http)
    researcher.create_researcher(admin, "simulation")
    sites = _site_settings(researcher, url, manifest_paths, out, cfg.device)
    # Every site enrolls (and so consents) before the experiment is created, as in a hospital.
    if cfg.backend == "ray":
        from deploy.launcher.ray_backend import RaySites

        ray_sites = RaySites([s[1] for s in sites], cfg.ray or RayOptions())
        console.print(f"{len(sites)} virtual sites on {len(set(ray_sites.nodes))} Ray node(s)")
        step_all: Callable[[], bool] = ray_sites.step_all
        close: Callable[[], None] = ray_sites.close
    else:
        # One client per agent over the app's single in-memory transport (one orchestrator).
        transport = http._transport  # type: ignore[attr-defined]
        agents = [
            SiteAgent(s[1], http=httpx.Client(transport=transport, base_url=url)) for s in sites
        ]
        for agent in agents:
            agent.prepare()

        def step_in_turn() -> bool:
            return any([a.step(wait_s=0) is not None for a in agents])

        def close_all() -> None:
            for agent in agents:
                agent.close()

        step_all, close = step_in_turn, close_all

    try:
        exp = researcher.create_experiment(_experiment(cfg, [s[0] for s in sites]))
        researcher.start(exp.id)
        progress = RoundProgress(researcher, exp.id, console)
        final = _drive(researcher, exp.id, step_all, progress)
    finally:
        close()
    rounds = [r.model_dump(mode="json") for r in researcher.rounds(exp.id)]
    dice: dict[str, dict[str, float | None]] = {}
    if cfg.evaluate and final.status == "completed":
        global_path = out / "global_final.safetensors"
        atomic_write_bytes(global_path, researcher.round_model(exp.id, cfg.rounds))
        dice = _evaluate(sites, global_path, exp.id, cfg)
    return exp, final, rounds, dice, progress


def _experiment(cfg: SimulationConfig, site_ids: list[str]) -> ExperimentCreate:
    k = len(site_ids)
    return ExperimentCreate(
        name=f"simulate-{cfg.partition}-{cfg.strategy}-{cfg.personalization}",
        spec=cfg.spec,
        rounds=cfg.rounds,
        fraction=cfg.fraction,
        min_sites=max(1, min(k, round(cfg.fraction * k))),
        sites=site_ids,
        train=_train_config(cfg),
        strategy=StrategyConfig.model_validate(
            {"name": cfg.strategy, "params": cfg.strategy_params}
        ),
        round_deadline_s=24 * 3600,
        seed=cfg.seed,
        privacy=cfg.privacy,
    )


def _train_config(cfg: SimulationConfig) -> TrainConfig:
    base = TrainConfig(
        local_epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        optimizer=OptimizerName(cfg.optimizer),
        fedprox_mu=cfg.fedprox_mu,
        max_steps=cfg.max_steps,
        codec=cfg.codec,
        personalization=PersonalizationConfig(
            method=PersonalizationMethod(cfg.personalization),
            alpha=cfg.alpha,
            ditto_lambda=cfg.ditto_lambda,
        ),
    )
    if not cfg.train_overrides:
        return base
    return TrainConfig.model_validate({**base.model_dump(), **cfg.train_overrides})


def _site_settings(
    researcher: ResearcherClient, url: str, manifests: list[Path], out: Path, device: str = "cpu"
) -> list[tuple[str, Any, Path]]:
    """Register one site per manifest; ``(site id, SiteSettings, manifest)`` each."""
    from site_agent.settings import SiteSettings

    sites = []
    for i, manifest in enumerate(manifests):
        reg = researcher.register_site(f"site_{i}")
        settings = SiteSettings.load(
            aggregator_url=url,
            allow_insecure_http=True,
            manifest=manifest,
            work_dir=out / "sites" / f"site_{i}",
            device=device,
            poll_wait_s=1,
            enrollment_token=SecretStr(reg.enrollment_token),
            accept_experiments=["*"],  # simulated hospitals consent to every experiment
        )
        sites.append((reg.id, settings, manifest))
    return sites


def _drive(
    researcher: ResearcherClient,
    exp_id: str,
    step_all: Callable[[], bool],
    progress: RoundProgress,
) -> Any:
    """Give every site a turn (``step_all``: True if any worked) until the experiment ends."""
    while True:
        worked = step_all()
        exp = researcher.experiment(exp_id)
        progress.update(exp)
        if exp.status in ("completed", "failed", "aborted"):
            return exp
        if not worked:
            time.sleep(0.1)


def _evaluate(
    sites: list[tuple[str, Any, Path]], global_path: Path, exp_id: str, cfg: SimulationConfig
) -> dict[str, dict[str, float | None]]:
    from site_agent.clinic.segment_command import run_evaluate
    from site_agent.errors import WorkDirError

    keeps_personal = PersonalizationConfig(
        method=PersonalizationMethod(cfg.personalization)
    ).keeps_personal
    table: dict[str, dict[str, float | None]] = {}
    for i, (_, settings, _) in enumerate(sites):
        row: dict[str, float | None] = {
            "global": run_evaluate(settings, weights=global_path, split="test", spec=cfg.spec)[
                "mean_dice"
            ]
        }
        if keeps_personal:
            try:
                row["personal"] = run_evaluate(
                    settings, kind="personal", experiment_id=exp_id, split="test"
                )["mean_dice"]
            except WorkDirError:  # never sampled (C < 1): no personal model to evaluate
                row["personal"] = None
        table[f"site_{i}"] = row
    return table


def _write_outputs(
    result: SimulationResult, progress: RoundProgress, cfg: SimulationConfig, out: Path
) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from deploy.launcher.report import plot_dice_per_round

    payload = {"config": _jsonable(asdict(cfg)), "result": asdict(result)}
    atomic_write_text(out / "results.json", json.dumps(payload, indent=2, default=str))
    plot_dice_per_round(progress.history, out / "dice_per_round.png")
    with SummaryWriter(str(out / "tensorboard")) as tb:
        for site, points in progress.history.items():
            for rnd, dice in points:
                tb.add_scalar(f"val_dice/{site}", dice, rnd)
        for site, row in result.final_dice.items():
            for model, value in row.items():
                if value is not None:
                    tb.add_scalar(f"test_dice_{model}/{site}", value, cfg.rounds)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value
