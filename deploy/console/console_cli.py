"""``fedseg experiments|sites|researchers``: the researchers' console, a thin CLI over the REST API.

Exit codes (for scripts): 0 done; 1 bad input (file, config, missing token); 3 the aggregator
refused the request (HTTP 4xx); 4 the aggregator could not be reached or failed (5xx);
5 ``watch`` saw the experiment end failed or aborted. ``--json`` prints machine-readable output.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from deploy.console.console_config import ConsoleConfig, ConsoleConfigError, load_config
from deploy.console.experiment_file import ExperimentFileError, load_experiment_file
from deploy.console.researcher_client import ResearcherApiError, ResearcherClient
from deploy.console.watch_view import privacy_text

EXIT_BAD_INPUT = 1
EXIT_REFUSED = 3
EXIT_UNREACHABLE = 4
EXIT_RUN_FAILED = 5

experiments_app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Create, run and follow experiments."
)
sites_app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Register, list, rotate and revoke sites."
)
researchers_app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Admin: create researcher tokens."
)

UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="Aggregator URL (else FEDSEG_URL, the config file, localhost)."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", help="Console config (TOML, mode 0600). Default ~/.config/fedseg/console.toml."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]
ExpArg = Annotated[str, typer.Argument(help="Experiment id.")]

_out = Console(soft_wrap=True)
_err = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int) -> typer.Exit:
    _err.print(f"error: {message}", markup=False, highlight=False)
    return typer.Exit(code)


@contextlib.contextmanager
def _session(
    url: str | None, config_path: Path | None, *, admin: bool = False
) -> Iterator[ResearcherClient]:
    """A client for the configured aggregator; every failure becomes a one-line error + exit code."""
    try:
        config: ConsoleConfig = load_config(config_path, url=url)
        token = config.require_token(admin=admin)
    except ConsoleConfigError as exc:
        raise _fail(str(exc), EXIT_BAD_INPUT) from exc
    verify: Any = str(config.ca_bundle) if config.ca_bundle else True
    try:
        with httpx.Client(base_url=config.url, verify=verify, timeout=60.0) as http:
            yield ResearcherClient(http, token)
    except ResearcherApiError as exc:
        code = EXIT_REFUSED if exc.status_code and exc.status_code < 500 else EXIT_UNREACHABLE
        raise _fail(str(exc), code) from exc
    except httpx.HTTPError as exc:
        raise _fail(
            f"cannot reach the aggregator at {config.url}: {exc}", EXIT_UNREACHABLE
        ) from exc
    except OSError as exc:  # e.g. an unreadable CA bundle
        raise _fail(f"cannot connect to {config.url}: {exc}", EXIT_UNREACHABLE) from exc


def _emit(as_json: bool, value: Any, human: Callable[[], None]) -> None:
    if as_json:
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        elif isinstance(value, list):
            value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
        sys.stdout.write(json.dumps(value, default=str, indent=2) + "\n")
    else:
        human()


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else ("—" if value is None else str(value))


# ---- experiments -------------------------------------------------------------------------------


@experiments_app.command("create")
def create(
    file: Annotated[Path, typer.Argument(help="Experiment file, YAML or JSON.")],
    start: Annotated[bool, typer.Option("--start", help="Start it at once.")] = False,
    url: UrlOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an experiment from a YAML or JSON file (validated first, errors at their lines)."""
    try:
        body = load_experiment_file(file)
    except ExperimentFileError as exc:
        _err.print(exc.render(), markup=False, highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from exc
    with _session(url, config) as client:
        exp = client.create_experiment(body)
        if start:
            exp = client.start(exp.id)
    _emit(as_json, exp, lambda: _out.print(f"{exp.id}  {exp.name}  {exp.status}", markup=False))


def _transition(
    action: str, experiment_id: str, url: str | None, config: Path | None, as_json: bool
) -> None:
    with _session(url, config) as client:
        exp = getattr(client, action)(experiment_id)
    _emit(as_json, exp, lambda: _out.print(f"{exp.id}  {exp.status}", markup=False))


@experiments_app.command("start")
def start(
    experiment_id: ExpArg, url: UrlOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """Start a created experiment, or resume a paused one."""
    _transition("start", experiment_id, url, config, as_json)


@experiments_app.command("pause")
def pause(
    experiment_id: ExpArg, url: UrlOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """Pause a running experiment (no new tasks, deadlines stop)."""
    _transition("pause", experiment_id, url, config, as_json)


@experiments_app.command("abort")
def abort(
    experiment_id: ExpArg, url: UrlOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """Abort an experiment for good."""
    _transition("abort", experiment_id, url, config, as_json)


@experiments_app.command("grant")
def grant(
    experiment_id: ExpArg,
    site_id: Annotated[str, typer.Argument(help="The (outside) site to grant the routing bundle.")],
    url: UrlOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Let an outside site download the experiment's routing bundle."""
    with _session(url, config) as client:
        granted = client.grant(experiment_id, site_id)
    _emit(
        as_json,
        granted,
        lambda: _out.print(
            f"granted {granted['site_name']} ({granted['site_id']}) the routing bundle of "
            f"{granted['experiment_id']}",
            markup=False,
        ),
    )


@experiments_app.command("list")
def list_experiments(
    url: UrlOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """Your experiments: status, rounds done, best mean Dice."""
    with _session(url, config) as client:
        rows = client.experiment_summaries()

    def human() -> None:
        table = Table("id", "name", "status", "rounds", "best Dice", "created")
        for r in rows:
            table.add_row(
                r["id"],
                r["name"],
                r["status"],
                f"{r['rounds_done']}/{r['rounds']}",
                _fmt(r["best_dice"]),
                str(r["created_at"])[:19],
            )
        _out.print(table)

    _emit(as_json, rows, human)


@experiments_app.command("show")
def show(
    experiment_id: ExpArg, url: UrlOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """One experiment: status, config and every round with per-site outcome."""
    with _session(url, config) as client:
        exp = client.experiment(experiment_id)
        rounds = client.rounds(experiment_id)

    def human() -> None:
        _out.print(
            f"{exp.name}  {exp.id}  {exp.status}  {exp.current_round}/{exp.config.rounds} "
            f"rounds  strategy {exp.config.strategy.name}",
            markup=False,
        )
        if exp.failure_reason:
            _out.print(f"failure: {exp.failure_reason}", markup=False)
        privacy = privacy_text(exp, rounds)
        if privacy is not None:
            _out.print(privacy, markup=False)
        dp = privacy is not None
        table = Table(
            "round",
            "attempt",
            "status",
            "site",
            "site status",
            "samples",
            "Dice",
            "global",
            "personal",
            "loss",
            *(("ε round", "ε total") if dp else ()),
            "reason",
        )
        for r in rounds:
            eps = (
                (_fmt(r.privacy.epsilon_round), _fmt(r.privacy.epsilon_total))
                if r.privacy
                else ("—", "—")
            )
            for s in r.sites:
                m = s.metrics
                table.add_row(
                    str(r.number),
                    str(r.attempt),
                    r.status,
                    s.site_name,
                    s.status,
                    _fmt(s.num_samples),
                    _fmt(m.val_dice if m else None),
                    _fmt(m.val_dice_global if m else None),
                    _fmt(m.val_dice_personal if m else None),
                    _fmt(m.train_loss if m else None),
                    *(eps if dp else ()),
                    s.reject_reason or s.failure_reason or r.reason or "",
                )
        _out.print(table)

    _emit(
        as_json,
        {
            "experiment": exp.model_dump(mode="json"),
            "rounds": [r.model_dump(mode="json") for r in rounds],
        },
        human,
    )


@experiments_app.command("watch")
def watch(
    experiment_id: ExpArg,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between polls.")
    ] = 2.0,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Stop after this many seconds.")
    ] = None,
    url: UrlOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line per ended round.")] = False,
) -> None:
    """Follow a run live: the open round's progress, time to deadline, Dice per site per round."""
    from deploy.console.watch_view import watch as follow

    with _session(url, config) as client:
        exp = follow(
            client,
            experiment_id,
            console=_out,
            interval_s=interval,
            as_json=as_json,
            timeout_s=timeout,
        )
    if exp.status in ("failed", "aborted"):
        raise _fail(
            f"experiment {exp.id} {exp.status}: {exp.failure_reason or 'no reason given'}",
            EXIT_RUN_FAILED,
        )


@experiments_app.command("download-model")
def download_model(
    experiment_id: ExpArg,
    round_number: Annotated[
        int, typer.Option("--round", min=0, help="Round (0: the initial model).")
    ],
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Output file.")] = None,
    url: UrlOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Download the global model after a round (safetensors, checked against its sha256)."""
    from data_specs.weights.bundle import sha256_hex

    target = out or Path(f"{experiment_id}_round_{round_number}.safetensors")
    with _session(url, config) as client:
        data = client.round_model(experiment_id, round_number)
    tmp = target.with_name(target.name + ".part")
    try:
        tmp.write_bytes(data)
        tmp.replace(target)  # atomic: never a half-written model under the final name
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _fail(f"cannot write {target}: {exc.strerror}", EXIT_BAD_INPUT) from exc
    info = {"path": str(target), "bytes": len(data), "sha256": sha256_hex(data)}
    _emit(
        as_json,
        info,
        lambda: _out.print(f"{target}  {len(data)} bytes  sha256 {info['sha256']}", markup=False),
    )


# ---- sites and researchers ---------------------------------------------------------------------


@sites_app.command("list")
def sites_list(url: UrlOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Every site with its status and when it was last seen."""
    with _session(url, config) as client:
        sites = client.sites()

    def human() -> None:
        table = Table("id", "name", "status", "enrolled", "last seen")
        for s in sites:
            table.add_row(
                s.id,
                s.name,
                s.status,
                str(s.enrolled_at or "—")[:19],
                str(s.last_seen_at or "—")[:19],
            )
        _out.print(table)

    _emit(as_json, sites, human)


@sites_app.command("register")
def sites_register(
    name: Annotated[str, typer.Argument(help="Site name. Example: hospital-a.")],
    url: UrlOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a site; prints its one-time enrollment token (give it to the site's IT)."""
    with _session(url, config) as client:
        reg = client.register_site(name)
    _emit(
        as_json,
        reg,
        lambda: _out.print(
            f"{reg.id}  {reg.name}\nenrollment token (shown once): {reg.enrollment_token}",
            markup=False,
        ),
    )


@sites_app.command("rotate")
def sites_rotate(
    site_id: Annotated[str, typer.Argument(help="Site id.")],
    url: UrlOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a site's token and print a new one-time enrollment token."""
    with _session(url, config) as client:
        reg = client.rotate_site(site_id)
    _emit(
        as_json,
        reg,
        lambda: _out.print(
            f"{reg.id}  {reg.name}\nenrollment token (shown once): {reg.enrollment_token}",
            markup=False,
        ),
    )


@sites_app.command("revoke")
def sites_revoke(
    site_id: Annotated[str, typer.Argument(help="Site id.")],
    url: UrlOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a site for good."""
    with _session(url, config) as client:
        site = client.revoke_site(site_id)
    _emit(as_json, site, lambda: _out.print(f"{site.id}  {site.name}  {site.status}", markup=False))


@researchers_app.command("create")
def researchers_create(
    name: Annotated[str, typer.Argument(help="Researcher name. Example: alice.")],
    url: UrlOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """As the admin (FEDSEG_ADMIN_TOKEN or admin_token in the config), create a researcher."""
    with _session(url, config, admin=True) as client:
        created = client.create_researcher(client.token or "", name)  # the admin token
    _emit(
        as_json,
        created,
        lambda: _out.print(
            f"{created.id}  {created.name}\ntoken (shown once): {created.token}", markup=False
        ),
    )


def register(app: typer.Typer) -> None:
    """Add the console's command groups to the ``fedseg`` app."""
    app.add_typer(experiments_app, name="experiments", help="Create, run and follow experiments.")
    app.add_typer(sites_app, name="sites", help="Register, list, rotate and revoke sites.")
    app.add_typer(researchers_app, name="researchers", help="Admin: create researcher tokens.")
