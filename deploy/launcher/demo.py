"""``fedseg demo``: a whole federation on this machine, for real, in a few minutes.

One aggregator and N site agents run as separate processes on 127.0.0.1 over real HTTP with a
real SQLite database, on synthetic hospitals generated on the fly. The demo runs FedAvg with
IOP-FL inside personalisation, adapts and routes the hospitals' models for a held-out synthetic
hospital, runs clinician inference on one of its scans, and writes a report folder.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from data_specs.constants import NormKind, OptimizerName, PersonalizationMethod
from data_specs.files import atomic_write_bytes
from data_specs.polling import poll_until
from data_specs.researcher.experiments import ExperimentCreate
from data_specs.task_spec import TaskSpec
from data_specs.wire import PersonalizationConfig, TrainConfig
from deploy.console.researcher_client import ResearcherClient
from deploy.console.round_progress import RoundProgress
from deploy.launcher.demo_config import DemoConfig, DemoResult
from deploy.launcher.processes import (
    LaunchError,
    ProcessGroup,
    fedseg_argv,
    free_port,
    process_group,
    wait_healthy,
)

SPEC = TaskSpec(
    spatial_dims=2,
    in_channels=1,
    out_channels=4,
    channels=(8, 16, 32),
    strides=(2, 2),
    num_res_units=1,
    norm=NormKind.BATCH,
    patch_size=(32, 32),
)


def run_demo(cfg: DemoConfig, console: Console | None = None) -> DemoResult:
    """Run the demo end to end; every process started is stopped whatever happens.

    Raises:
        LaunchError: a process failed to start or died, or the experiment failed.
    """
    from data_specs.sources.synth import synthesize

    console = console or Console()
    t0 = time.monotonic()
    work = cfg.work_dir.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    console.rule("[bold]fedseg demo")
    manifests = synthesize(
        work / "data", sites=cfg.sites, cases=cfg.cases, dims=2, seed=cfg.seed, outside=1
    )
    inside, outside = manifests[: cfg.sites], manifests[cfg.sites]
    console.print(
        f"generated {cfg.sites} synthetic hospitals + 1 outside hospital in {work / 'data'}"
    )
    admin_token = secrets.token_urlsafe(32)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with process_group(work / "logs") as group, httpx.Client(base_url=url, timeout=60) as http:
        agg = group.start(
            "aggregator",
            fedseg_argv(
                "aggregator",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(work / "aggregator"),
            ),
            env={"FEDSEG_AGG_ADMIN_TOKEN": admin_token},
        )
        wait_healthy(f"{url}/healthz", agg)
        console.print(f"aggregator up at {url} (pid {agg.popen.pid})")
        researcher = ResearcherClient(http)
        researcher.create_researcher(admin_token, "demo-researcher")
        site_ids = _start_sites(group, researcher, inside, url, work)
        _wait_enrolled(researcher, list(site_ids.values()), group)
        console.print(f"{len(site_ids)} site agents enrolled: {', '.join(site_ids)}")
        exp = researcher.create_experiment(
            ExperimentCreate(
                name="demo-fedavg-iopfl",
                spec=SPEC,
                rounds=cfg.rounds,
                fraction=1.0,
                min_sites=len(site_ids),
                sites=list(site_ids.values()),
                train=TrainConfig(
                    local_epochs=cfg.local_epochs,
                    batch_size=8,
                    lr=3e-3,
                    optimizer=OptimizerName.ADAM,
                    personalization=PersonalizationConfig(method=PersonalizationMethod.IOPFL),
                ),
                round_deadline_s=600,
                seed=cfg.seed,
            )
        )
        researcher.start(exp.id)
        progress = RoundProgress(researcher, exp.id, console)
        final = researcher.wait_finished(exp.id, timeout_s=900, poll_s=0.5, on_poll=progress.update)
        progress.update(final)
        group.check_alive(["aggregator"])
        if final.status != "completed":
            raise LaunchError(f"experiment {final.status}: {final.failure_reason}")
        for name in site_ids:  # their work is done; free the cores for evaluation
            group.stop(next(p for p in group.processes if p.name == name))
        global_path = work / "global_final.safetensors"
        atomic_write_bytes(global_path, researcher.round_model(exp.id, cfg.rounds))
        dice = _evaluate_inside(inside, work, exp.id, global_path)
        console.print("evaluated global and personal models on each hospital's test split")
        extras = _outside(group, researcher, outside, url, work, exp.id, global_path, cfg, console)
        dice[outside.parent.name] = extras.pop("dice")
    from deploy.launcher.demo_report import write_demo_report

    result = DemoResult(
        experiment_id=exp.id,
        dice=dice,
        history=progress.history,
        round_seconds=progress.round_seconds,
        report=cfg.report_dir.resolve() / "README.md",
        seconds=time.monotonic() - t0,
        extras=extras,
    )
    write_demo_report(result, cfg)
    _print_table(console, result)
    return result


def _site_env(url: str, manifest: Path, work: Path, **extra: str) -> dict[str, str]:
    # Co-located agents share this machine's cores: one compute thread each avoids the
    # OpenMP oversubscription that slows every process when each starts a thread per core.
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    return {
        "OMP_NUM_THREADS": threads,
        "FEDSEG_SITE_AGGREGATOR_URL": url,
        "FEDSEG_SITE_MANIFEST": str(manifest),
        "FEDSEG_SITE_WORK_DIR": str(work),
        "FEDSEG_SITE_ALLOW_INSECURE_HTTP": "true",  # loopback demo; deployments use TLS
        "FEDSEG_SITE_DEVICE": "cpu",
        "FEDSEG_SITE_POLL_WAIT_S": "5",
        "FEDSEG_SITE_ACCEPT_EXPERIMENTS": '["*"]',  # demo hospitals consent to every experiment
        **extra,
    }


def _start_sites(
    group: ProcessGroup, researcher: ResearcherClient, manifests: list[Path], url: str, work: Path
) -> dict[str, str]:
    site_ids: dict[str, str] = {}
    for manifest in manifests:
        name = manifest.parent.name
        reg = researcher.register_site(name)
        site_ids[name] = reg.id
        group.start(
            name,
            fedseg_argv("site", "run", "--log-level", "WARNING"),
            env=_site_env(
                url,
                manifest,
                work / "sites" / name,
                FEDSEG_SITE_ENROLLMENT_TOKEN=reg.enrollment_token,
                FEDSEG_SITE_SHARE_PERSONAL="true",
            ),
        )
    return site_ids


def _wait_enrolled(researcher: ResearcherClient, ids: list[str], group: ProcessGroup) -> None:
    def missing() -> set[str]:
        group.check_alive()
        return set(ids) - {s.id for s in researcher.sites() if s.status == "enrolled"}

    poll_until(
        missing,
        lambda left: not left,
        interval_s=0.3,
        timeout_s=120,
        give_up=lambda _left: LaunchError(
            "site agents did not enroll within 120 s (see the logs folder)"
        ),
    )


def _settings(manifest: Path, work: Path) -> Any:
    from site_agent.settings import SiteSettings

    return SiteSettings.load(manifest=manifest, work_dir=work, device="cpu")


def _evaluate_inside(
    manifests: list[Path], work: Path, exp_id: str, global_path: Path
) -> dict[str, dict[str, float | None]]:
    from site_agent.clinic.segment_command import run_evaluate

    table: dict[str, dict[str, float | None]] = {}
    for manifest in manifests:
        name = manifest.parent.name
        settings = _settings(manifest, work / "sites" / name)
        g = run_evaluate(settings, weights=global_path, split="test", spec=SPEC)
        p = run_evaluate(settings, kind="personal", experiment_id=exp_id, split="test")
        table[name] = {"global": g["mean_dice"], "personal": p["mean_dice"], "routed": None}
    return table


def _outside(
    group: ProcessGroup,
    researcher: ResearcherClient,
    manifest: Path,
    url: str,
    work: Path,
    exp_id: str,
    global_path: Path,
    cfg: DemoConfig,
    console: Console,
) -> dict[str, Any]:
    from site_agent.clinic.segment_command import run_evaluate

    name = manifest.parent.name
    site_work = work / "sites" / name
    reg = researcher.register_site(name)
    researcher.grant(exp_id, reg.id)
    env = _site_env(url, manifest, site_work, FEDSEG_SITE_ENROLLMENT_TOKEN=reg.enrollment_token)
    t = time.monotonic()
    proc = group.start(
        f"{name}_adapt",
        fedseg_argv(
            "site",
            "adapt",
            "--experiment",
            exp_id,
            "--manifest",
            str(manifest),
            "--steps",
            str(cfg.adapt_steps),
            "--seed",
            str(cfg.seed),
        ),
        env=env,
    )
    if proc.popen.wait(timeout=600) != 0:
        raise LaunchError(f"fedseg site adapt failed:\n{proc.log_tail()}")
    adapt_s = time.monotonic() - t
    console.print(
        f"outside hospital {name}: routed model adapted on its unlabelled scans in {adapt_s:.1f} s"
    )
    settings = _settings(manifest, site_work)
    g = run_evaluate(settings, weights=global_path, split="test", spec=SPEC)
    r = run_evaluate(settings, kind="routed", experiment_id=exp_id, split="test")
    # Clinician inference on one of the outside hospital's scans, through the real CLI.
    from data_specs.manifests.manifest import load_manifest

    m = load_manifest(manifest)
    case = next(iter(m.iter_cases("test")))
    scan = m.resolve(case).image
    cfg.report_dir.mkdir(parents=True, exist_ok=True)
    mask = site_work / "inference_mask.nii.gz"
    picture = cfg.report_dir.resolve() / "inference.png"
    infer = group.start(
        f"{name}_infer",
        fedseg_argv(
            "site",
            "infer",
            str(scan),
            "-o",
            str(mask),
            "--model",
            "routed",
            "--experiment",
            exp_id,
            "--png",
            str(picture),
        ),
        env=env,
    )
    if infer.popen.wait(timeout=300) != 0:
        raise LaunchError(f"fedseg site infer failed:\n{infer.log_tail()}")
    console.print(
        f"clinician inference: mask {mask.name} in the scan's geometry, picture {picture}"
    )
    return {
        "dice": {"global": g["mean_dice"], "personal": None, "routed": r["mean_dice"]},
        "adapt_seconds": adapt_s,
        "mask": mask,
        "picture": picture,
    }


def _print_table(console: Console, result: DemoResult) -> None:
    table = Table(title="Mean test Dice (foreground classes) per hospital")
    for col in ("hospital", "global", "personal (IOP-FL)", "routed (outside)"):
        table.add_column(col)
    for site, row in result.dice.items():
        table.add_row(site, *(_fmt(row.get(k)) for k in ("global", "personal", "routed")))
    console.print(table)
    console.print(f"report: {result.report}   ({result.seconds:.0f} s in all)")


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"
