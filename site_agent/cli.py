"""``fedseg site``: run the agent, enroll, segment a scan, adapt a routed model, evaluate a model."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from data_specs.constants import DeviceName, LogLevel, RouterGate, SplitName
from site_agent.errors import (
    AggregatorUnavailableError,
    ManifestRejectedError,
    SiteAgentError,
    SiteSettingsError,
    TLSVerificationError,
    TokenRevokedError,
    WorkDirError,
)

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Run the site agent, enroll, show the dataset fingerprint, segment a scan, adapt a "
    "routed model, evaluate a model.",
)

# Exit codes, for hospital IT's service manager and the launcher.
EXIT_CODES: dict[type[SiteAgentError], int] = {
    SiteSettingsError: 2,
    AggregatorUnavailableError: 3,
    TokenRevokedError: 4,
    ManifestRejectedError: 5,
    WorkDirError: 6,
    TLSVerificationError: 7,
}

Config = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar="FEDSEG_SITE_CONFIG",
        help="KEY=VALUE settings file (FEDSEG_SITE_* keys); tokens belong here or in the environment.",
    ),
]
WorkDirOpt = Annotated[
    Path | None, typer.Option("--work-dir", help="Site work dir (token, state, models).")
]
ManifestOpt = Annotated[Path | None, typer.Option("--manifest", help="The site's dataset.json.")]
UrlOpt = Annotated[
    str | None, typer.Option("--aggregator-url", help="https://host:port of the aggregator.")
]
DeviceOpt = Annotated[
    DeviceName | None,
    typer.Option("--device", case_sensitive=False, help="auto: cuda when torch sees one."),
]
ExperimentOpt = Annotated[
    str | None, typer.Option("--experiment", help="Experiment id (default: the only one).")
]
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        help="global, personal, routed (what `adapt` chose) or expert:<site> (routing bundle).",
    ),
]
WeightsOpt = Annotated[Path | None, typer.Option("--weights", help="Use this model file instead.")]


def _settings(config: Path | None, **overrides: Any) -> Any:
    from site_agent.settings import SiteSettings

    return SiteSettings.load(config, **overrides)


def _backoff(settings: Any) -> Any:
    """The retry policy the settings ask for (FEDSEG_SITE_BACKOFF_*, FEDSEG_SITE_MAX_RETRIES)."""
    from site_agent.federation.retry import Backoff

    return Backoff.from_settings(settings)


def _setup_logging(level: LogLevel) -> None:
    logging.basicConfig(
        level=level.value,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # request lines add nothing for IT


def _fail(exc: SiteAgentError) -> typer.Exit:
    if isinstance(exc, ManifestRejectedError) and exc.report:
        typer.echo(exc.report, err=True)
    typer.echo(f"error: {exc}", err=True)
    code = next((c for kind, c in EXIT_CODES.items() if isinstance(exc, kind)), 1)
    return typer.Exit(code)


@app.command("run")
def run(
    config: Config = None,
    aggregator_url: UrlOpt = None,
    manifest: ManifestOpt = None,
    work_dir: WorkDirOpt = None,
    device: DeviceOpt = None,
    share_personal: Annotated[
        bool | None,
        typer.Option(
            "--share-personal/--no-share-personal",
            help="Share the personal model for outside routing (opt-in).",
        ),
    ] = None,
    allow_insecure_http: Annotated[
        bool | None,
        typer.Option(
            "--allow-insecure-http", help="Accept a plain http:// URL (development only)."
        ),
    ] = None,
    poll_wait: Annotated[int | None, typer.Option("--poll-wait", help="Long-poll seconds.")] = None,
    once: Annotated[bool, typer.Option("--once", help="Handle one task, then exit.")] = False,
    max_tasks: Annotated[
        int | None, typer.Option("--max-tasks", min=1, help="Exit after N tasks.")
    ] = None,
    log_level: Annotated[
        LogLevel, typer.Option("--log-level", case_sensitive=False, help="Log level.")
    ] = LogLevel.INFO,
) -> None:
    """Validate the local data, enroll on first start, then train on the aggregator's tasks."""
    from data_specs import startup_gc
    from site_agent.lean_start import skip_unused_imports

    skip_unused_imports()
    startup_gc.pause()  # no cyclic GC until the agent has enrolled (SiteAgent.run resumes it)
    from site_agent.federation.loop import SiteAgent
    from site_agent.federation.shutdown import StopRequested, stop_on_signals
    from site_agent.training.threads import apply_site_threads

    _setup_logging(log_level)
    try:
        settings = _settings(
            config,
            aggregator_url=aggregator_url,
            manifest=manifest,
            work_dir=work_dir,
            device=device,
            share_personal=share_personal,
            allow_insecure_http=allow_insecure_http,
            poll_wait_s=poll_wait,
        )
        apply_site_threads()
        with SiteAgent(settings) as agent, stop_on_signals(agent.stop_event):
            summary = agent.run(once=once, max_tasks=max_tasks)
    except SiteAgentError as exc:
        raise _fail(exc) from None
    except StopRequested as exc:  # SIGTERM (docker stop): a clean stop, exit 0
        typer.echo(f"{exc}; a task in progress resumes at the next start", err=True)
        raise typer.Exit(0) from None
    except KeyboardInterrupt:
        typer.echo("stopped; a task in progress resumes at the next start", err=True)
        raise typer.Exit(130) from None
    finally:
        startup_gc.resume()  # also when the start-up failed (in-process callers, tests)
    typer.echo(f"handled {summary.tasks} task(s): " + ", ".join(o.value for o in summary.outcomes))


@app.command("enroll")
def enroll(
    config: Config = None,
    aggregator_url: UrlOpt = None,
    work_dir: WorkDirOpt = None,
    allow_insecure_http: Annotated[bool | None, typer.Option("--allow-insecure-http")] = None,
) -> None:
    """Exchange the enrollment token (FEDSEG_SITE_ENROLLMENT_TOKEN) for a site token."""
    from site_agent.federation.client import AggregatorClient, make_http_client
    from site_agent.federation.enrollment import enroll as do_enroll
    from site_agent.federation.workdir import WorkDir

    _setup_logging(LogLevel.INFO)
    try:
        settings = _settings(
            config,
            aggregator_url=aggregator_url,
            work_dir=work_dir,
            allow_insecure_http=allow_insecure_http,
        )
        with make_http_client(settings) as http:
            response = do_enroll(
                AggregatorClient(http, backoff=_backoff(settings)),
                settings,
                WorkDir(settings.work_dir),
            )
    except SiteAgentError as exc:
        raise _fail(exc) from None
    typer.echo(
        f"enrolled as {response.site_name} ({response.site_id}); token kept in {settings.work_dir}"
    )


@app.command("fingerprint")
def fingerprint(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the exact JSON the agent sends.")
    ] = False,
    config: Config = None,
    manifest: ManifestOpt = None,
    work_dir: WorkDirOpt = None,
) -> None:
    """Show the dataset fingerprint: exactly what leaves the site for plan: auto (aggregates)."""
    if not as_json:
        typer.echo("computing the dataset fingerprint (reads every training scan) ...", err=True)
    from data_specs.errors import DataSpecError
    from site_agent.federation.fingerprints import manifest_fingerprint
    from site_agent.federation.workdir import WorkDir

    try:
        settings = _settings(config, manifest=manifest, work_dir=work_dir)
        path = settings.require_manifest()
        result = manifest_fingerprint(path, WorkDir(settings.work_dir))
    except SiteAgentError as exc:
        raise _fail(exc) from None
    except (DataSpecError, OSError) as exc:
        typer.echo(f"error: no fingerprint: {exc}", err=True)
        raise typer.Exit(1) from None
    data = result.model_dump(mode="json")
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo("This is all the aggregator receives about the local data (no case, no file name):")
    for key, value in data.items():
        typer.echo(f"{key}: {json.dumps(value)}")


def _site_client(config: Path | None, work_dir: Path | None) -> Any:
    """A context manager yielding an ``AggregatorClient`` holding the site's token."""
    import contextlib

    from site_agent.federation.client import AggregatorClient, make_http_client
    from site_agent.federation.enrollment import ensure_token
    from site_agent.federation.workdir import WorkDir

    @contextlib.contextmanager
    def opened() -> Any:
        settings = _settings(config, work_dir=work_dir)
        with make_http_client(settings) as http:
            client = AggregatorClient(http, backoff=_backoff(settings))
            ensure_token(client, settings, WorkDir(settings.work_dir))
            yield client

    return opened()


@app.command("invitations")
def invitations(config: Config = None, work_dir: WorkDirOpt = None) -> None:
    """Experiments that may sample this site: what each runs and this site's decision."""
    _setup_logging(LogLevel.WARNING)
    try:
        with _site_client(config, work_dir) as client:
            rows = client.invitations()
    except SiteAgentError as exc:
        raise _fail(exc) from None
    if not rows:
        typer.echo("no invitations")
    for row in rows:
        spec = row["spec"]
        typer.echo(
            f"{row['experiment_id']}  {row['decision']:<8} {row['name']!r} by {row['researcher']}: "
            f"{spec['spatial_dims']}D U-Net channels {spec['channels']}, {row['rounds']} rounds x "
            f"{row['local_epochs']} epoch(s) (max_steps {row['max_steps']}), codec {row['codec']}, "
            f"personalisation {row['personalization']}, strategy {row['strategy']}, "
            f"min_sites {row['min_sites']}; personal models go to the researcher only if this "
            "agent sets share_personal"
        )


@app.command("approve")
def approve(
    experiment: Annotated[str, typer.Argument(help="experiment id from `fedseg site invitations`")],
    decline: Annotated[bool, typer.Option("--decline", help="decline instead")] = False,
    config: Config = None,
    work_dir: WorkDirOpt = None,
) -> None:
    """Approve (or ``--decline``) an experiment before it starts; only approved sites take part."""
    _setup_logging(LogLevel.WARNING)
    try:
        with _site_client(config, work_dir) as client:
            row = client.decide(experiment, approve=not decline)
    except SiteAgentError as exc:
        raise _fail(exc) from None
    typer.echo(f"{row['experiment_id']}: {row['decision']}")


@app.command("infer")
def infer(
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="Mask to write: .nii.gz, .png/.tif (2D) or .dcm (DICOM SEG); a folder for "
            "several scans.",
        ),
    ],
    scans: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Scans: NIfTI files, pictures, DICOM series folders, or folders of scans."
        ),
    ] = None,
    channel: Annotated[
        list[Path] | None,
        typer.Option("--channel", help="One channel file of the scan; repeat in channel order."),
    ] = None,
    model: ModelOpt = "global",
    experiment: ExperimentOpt = None,
    weights: WeightsOpt = None,
    png: Annotated[
        Path | None,
        typer.Option("--png", help="Also write a picture with the mask (a folder for several)."),
    ] = None,
    mask_suffix: Annotated[
        str | None,
        typer.Option("--mask-suffix", help="Masks' suffix for several scans, e.g. .png or .dcm."),
    ] = None,
    config: Config = None,
    work_dir: WorkDirOpt = None,
    manifest: ManifestOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Segment scans, loading the model once; each mask keeps its scan's exact grid."""
    from site_agent.clinic.segment_command import run_infer

    try:
        settings = _settings(config, work_dir=work_dir, manifest=manifest, device=device)
        lines = run_infer(
            settings,
            scans or [],
            output,
            channels=channel or [],
            kind=model,
            experiment_id=experiment,
            weights=weights,
            png=png,
            mask_suffix=mask_suffix,
            echo=typer.echo,
            progress=sys.stderr.isatty(),
        )
    except SiteAgentError as exc:
        raise _fail(exc) from None
    for line in lines:
        typer.echo(line)


@app.command("evaluate")
def evaluate(
    model: ModelOpt = "global",
    experiment: ExperimentOpt = None,
    weights: WeightsOpt = None,
    split: Annotated[SplitName, typer.Option("--split", help="The labelled split to score.")] = (
        SplitName.TEST
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: Config = None,
    work_dir: WorkDirOpt = None,
    manifest: ManifestOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Dice per class, mean Dice and HD95 of a model on a local split (default: test)."""
    if not as_json:  # the first line, before torch and MONAI load
        typer.echo(f"evaluating the {model} model on the {split} split ...", err=True)
    from site_agent.clinic.segment_command import run_evaluate

    try:
        settings = _settings(config, work_dir=work_dir, manifest=manifest, device=device)
        report = run_evaluate(
            settings, kind=model, experiment_id=experiment, weights=weights, split=split
        )
    except SiteAgentError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        typer.echo(f"{key}: {value}")


@app.command("adapt")
def adapt(
    experiment: Annotated[str, typer.Option("--experiment", help="Experiment id.")],
    manifest: Annotated[Path, typer.Option("--manifest", help="The outside site's dataset.json.")],
    steps: Annotated[int, typer.Option("--steps", min=1, max=100_000)] = 60,
    lr: Annotated[float, typer.Option("--lr", min=1e-6, max=1.0)] = 3e-3,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    gate: Annotated[RouterGate, typer.Option("--gate", help="Router gate.")] = RouterGate.SOFTMAX,
    config: Config = None,
    aggregator_url: UrlOpt = None,
    work_dir: WorkDirOpt = None,
    device: DeviceOpt = None,
    allow_insecure_http: Annotated[bool | None, typer.Option("--allow-insecure-http")] = None,
) -> None:
    """Download the routing bundle, adapt it safely on the unlabelled local scans, record the choice.

    The adapted routed model is checked label-free against the federation's own models; when
    it looks worse, the command falls back to the global model or the best single expert and
    says so. `fedseg site infer --model routed` then uses that choice.
    """
    typer.echo(f"adapting experiment {experiment} to the scans of {manifest} ...", err=True)
    from site_agent.clinic.adapt import adapt_experiment, adaptation_manifest
    from site_agent.federation.client import AggregatorClient, make_http_client
    from site_agent.federation.enrollment import ensure_token
    from site_agent.federation.workdir import WorkDir

    _setup_logging(LogLevel.INFO)
    try:
        settings = _settings(
            config,
            aggregator_url=aggregator_url,
            work_dir=work_dir,
            device=device,
            allow_insecure_http=allow_insecure_http,
        )
        workdir = WorkDir(settings.work_dir)
        adaptation_manifest(manifest)  # a bad manifest fails before any network call
        with make_http_client(settings) as http:
            client = AggregatorClient(http, backoff=_backoff(settings))
            ensure_token(client, settings, workdir)
            path, result = adapt_experiment(
                client,
                workdir,
                experiment,
                manifest,
                steps=steps,
                lr=lr,
                seed=seed,
                gate=gate.value,  # type: ignore[arg-type]
                device=settings.resolve_device(),
            )
    except SiteAgentError as exc:
        raise _fail(exc) from None
    record = result.record
    typer.echo(
        f"routed model saved to {path} after {record.steps} steps over {record.scans} scans "
        f"({record.seconds:.1f} s)"
    )
    typer.echo(record.message)
    typer.echo(
        f"choice: {record.choice} (recorded in {workdir.choice_path(experiment)}; "
        "`fedseg site infer --model routed` uses it)"
    )


def main() -> None:
    """Entry point of ``python -m site_agent``."""
    app(prog_name="fedseg site")
