"""Compose bootstrap: the researcher's first steps, done once for the demo federation.

``python -m deploy.entrypoints.bootstrap sites`` creates a researcher with the admin token and
registers the hospitals, writing each enrollment token to ``OUT/<site>.env`` (0600) for its agent.
``... experiment`` waits until they have enrolled, then creates and starts a small experiment.
Both are idempotent: what exists in ``OUT`` is reused, so ``docker compose up`` can run them again.
Real deployments do these steps by hand (docs/researcher.md); this only saves the demo's clicks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import httpx
import typer

from data_specs.files import atomic_write_text
from data_specs.polling import poll_until
from data_specs.researcher.experiments import ExperimentCreate
from data_specs.researcher.principals import SitePublic
from data_specs.task_spec import TaskSpec
from data_specs.wire import TrainConfig
from deploy.console.researcher_client import ResearcherApiError, ResearcherClient
from deploy.tls import client_ssl_context

RESEARCHER_TOKEN = "researcher_token"
EXPERIMENT_ID = "experiment_id"
# fedseg data synth's defaults: 2-D, 32x32, three foreground classes.
DEMO_SPEC = TaskSpec(
    spatial_dims=2, out_channels=4, channels=(8, 16, 32), strides=(2, 2), patch_size=(32, 32)
)

bootstrap_app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

UrlOpt = Annotated[str, typer.Option(envvar="FEDSEG_BOOTSTRAP_URL", help="Aggregator base URL.")]
CaOpt = Annotated[
    Path | None,
    typer.Option(envvar="FEDSEG_BOOTSTRAP_CA", help="CA bundle (PEM) of the aggregator."),
]
OutOpt = Annotated[Path, typer.Option(help="Folder for the researcher token and site env files.")]
SiteOpt = Annotated[list[str], typer.Option("--site", help="Hospital name (repeat).")]


class BootstrapError(RuntimeError):
    """The aggregator was not healthy, or sites did not enroll in time."""


def _http(url: str, ca: Path | None) -> httpx.Client:
    if ca is not None and not ca.is_file():
        raise BootstrapError(f"expected the aggregator's CA bundle at {ca}, found nothing")
    verify = client_ssl_context(ca) if ca else True
    return httpx.Client(base_url=url, verify=verify, timeout=30)


def wait_healthy(http: httpx.Client, timeout_s: float = 120) -> None:
    """Poll ``/healthz`` until it answers 200."""

    def healthy() -> bool:
        with contextlib.suppress(httpx.TransportError):
            return http.get("/healthz").status_code == 200
        return False

    poll_until(
        healthy,
        bool,
        interval_s=1,
        timeout_s=timeout_s,
        give_up=lambda _healthy: BootstrapError(
            f"aggregator at {http.base_url} not healthy after {timeout_s:.0f} s"
        ),
    )


def ensure_researcher(client: ResearcherClient, admin_token: str, out: Path, name: str) -> None:
    """Use the researcher token kept in ``out``, creating the researcher on first use."""
    path = out / RESEARCHER_TOKEN
    if path.is_file():
        client.use_token(path.read_text().strip())
        return
    made = client.create_researcher(admin_token, name)
    atomic_write_text(path, made.token, mode=0o600)


def ensure_sites(client: ResearcherClient, out: Path, names: list[str]) -> dict[str, str]:
    """Register each site that has no env file yet (rotating it if it exists); return name → id."""
    known = {s.name: s.id for s in client.sites()}
    ids: dict[str, str] = {}
    for name in names:
        env_file = out / f"{name}.env"
        if name in known and env_file.is_file():
            ids[name] = known[name]
            continue
        # Registered earlier but its token file is lost: only a rotation gives a fresh token.
        reg = client.rotate_site(known[name]) if name in known else client.register_site(name)
        ids[name] = reg.id
        line = f"FEDSEG_SITE_ENROLLMENT_TOKEN={reg.enrollment_token}\n"
        atomic_write_text(env_file, line, mode=0o600)
    return ids


def wait_enrolled(
    client: ResearcherClient, names: list[str], timeout_s: float, poll_s: float = 2.0
) -> list[str]:
    """Site ids of ``names`` once all of them are enrolled."""

    def look() -> tuple[dict[str, SitePublic], list[str]]:
        sites = {s.name: s for s in client.sites()}
        return sites, [n for n in names if n not in sites or sites[n].status != "enrolled"]

    sites, _ = poll_until(
        look,
        lambda seen: not seen[1],
        interval_s=poll_s,
        timeout_s=timeout_s,
        give_up=lambda seen: BootstrapError(
            f"sites not enrolled after {timeout_s:.0f} s: {seen[1]}"
        ),
    )
    return sorted(sites[n].id for n in names)


def start_experiment(client: ResearcherClient, site_ids: list[str], rounds: int) -> str:
    """Create and start the demo experiment on ``site_ids``; return its id."""
    body = ExperimentCreate(
        name="compose-demo",
        spec=DEMO_SPEC,
        rounds=rounds,
        min_sites=len(site_ids),
        sites=site_ids,
        train=TrainConfig(local_epochs=1, batch_size=4),
    )
    made = client.create_experiment(body)
    client.start(made.id)
    return made.id


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """A refusal is one line on stderr and exit code 1, not a traceback."""
    try:
        yield
    except (BootstrapError, ResearcherApiError, httpx.HTTPError, OSError) as exc:
        # OSError: a token file or the CA bundle is missing; its message names the path.
        typer.echo(f"bootstrap failed: {exc}", err=True)
        raise typer.Exit(code=1) from exc


@bootstrap_app.command("sites")
def sites(
    url: UrlOpt,
    admin_token_file: Annotated[Path, typer.Option(help="File holding the admin token.")],
    out: OutOpt,
    site: SiteOpt,
    ca: CaOpt = None,
    researcher: Annotated[str, typer.Option(help="Researcher name.")] = "demo-researcher",
) -> None:
    """Create the researcher and register the sites; write one enrollment env file per site."""
    with _refusals(), _http(url, ca) as http:
        admin_token = admin_token_file.read_text().strip()
        out.mkdir(parents=True, exist_ok=True)
        wait_healthy(http)
        client = ResearcherClient(http)
        ensure_researcher(client, admin_token, out, researcher)
        ids = ensure_sites(client, out, site)
    typer.echo(f"sites registered: {', '.join(f'{n}={i}' for n, i in ids.items())}")
    typer.echo(f"researcher token: {out / RESEARCHER_TOKEN} (0600)")


@bootstrap_app.command("experiment")
def experiment(
    url: UrlOpt,
    out: OutOpt,
    site: SiteOpt,
    ca: CaOpt = None,
    rounds: Annotated[int, typer.Option(envvar="FEDSEG_DEMO_ROUNDS", min=0)] = 3,
    enroll_timeout_s: Annotated[float, typer.Option(min=1)] = 600,
) -> None:
    """Wait for the sites to enroll, then create and start a small experiment (once)."""
    if rounds == 0 or (out / EXPERIMENT_ID).is_file():
        typer.echo("no experiment to start (FEDSEG_DEMO_ROUNDS=0 or one exists)")
        return
    with _refusals(), _http(url, ca) as http:
        client = ResearcherClient(http, (out / RESEARCHER_TOKEN).read_text().strip())
        site_ids = wait_enrolled(client, site, enroll_timeout_s)
        exp_id = start_experiment(client, site_ids, rounds)
    atomic_write_text(out / EXPERIMENT_ID, exp_id)
    typer.echo(f"experiment {exp_id} started on {len(site_ids)} sites, {rounds} rounds")


if __name__ == "__main__":
    bootstrap_app()
