"""Compose bootstrap: the researcher's first steps, done once for the demo federation.

``python -m deploy.entrypoints.bootstrap sites`` creates a researcher with the admin token and
registers the hospitals, writing each enrollment token to ``OUT/<site>.env`` (0600) for its agent.
``... experiment`` waits until they have enrolled, then creates and starts a small experiment.
Both are idempotent: what exists in ``OUT`` is reused, so ``docker compose up`` can run them again.
Real deployments do these steps by hand (docs/researcher.md); this only saves the demo's clicks.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from data_specs.files import atomic_write_text
from deploy.tls import client_ssl_context

API = "/api/v1"
RESEARCHER_TOKEN = "researcher_token"
EXPERIMENT_ID = "experiment_id"
DEMO_SPEC = {
    "spatial_dims": 2,
    "out_channels": 4,  # fedseg data synth: 3 foreground classes by default
    "channels": [8, 16, 32],
    "strides": [2, 2],
    "patch_size": [32, 32],
}

bootstrap_app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

UrlOpt = Annotated[str, typer.Option(envvar="FEDSEG_BOOTSTRAP_URL", help="Aggregator base URL.")]
CaOpt = Annotated[
    Path | None,
    typer.Option(envvar="FEDSEG_BOOTSTRAP_CA", help="CA bundle (PEM) of the aggregator."),
]
OutOpt = Annotated[Path, typer.Option(help="Folder for the researcher token and site env files.")]
SiteOpt = Annotated[list[str], typer.Option("--site", help="Hospital name (repeat).")]


class BootstrapError(RuntimeError):
    """The aggregator refused a bootstrap step, or sites did not enroll in time."""


def _client(url: str, ca: Path | None) -> httpx.Client:
    verify = client_ssl_context(ca) if ca else True
    return httpx.Client(base_url=url, verify=verify, timeout=30)


def _call(http: httpx.Client, method: str, path: str, token: str, **kwargs: Any) -> Any:
    resp = http.request(method, API + path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
    if resp.status_code >= 400:
        # The body is the API's error message; it never holds a token.
        raise BootstrapError(
            f"{method} {path}: expected success, got {resp.status_code}: {resp.text[:300]}"
        )
    return resp.json() if resp.content else None


def wait_healthy(http: httpx.Client, timeout_s: float = 120) -> None:
    """Poll ``/healthz`` until it answers 200."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if http.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise BootstrapError(
                f"aggregator at {http.base_url} not healthy after {timeout_s:.0f} s"
            )
        time.sleep(1)


def ensure_researcher(http: httpx.Client, admin_token: str, out: Path, name: str) -> str:
    """The researcher token in ``out``, creating the researcher on first use."""
    path = out / RESEARCHER_TOKEN
    if path.is_file():
        return path.read_text().strip()
    made = _call(http, "POST", "/researchers", admin_token, json={"name": name})
    atomic_write_text(path, made["token"], mode=0o600)
    return str(made["token"])


def ensure_sites(http: httpx.Client, token: str, out: Path, names: list[str]) -> dict[str, str]:
    """Register each site that has no env file yet (rotating it if it exists); return name → id."""
    known = {s["name"]: s for s in _call(http, "GET", "/sites", token)}
    ids: dict[str, str] = {}
    for name in names:
        env_file = out / f"{name}.env"
        if name in known:
            ids[name] = known[name]["id"]
            if env_file.is_file():
                continue
            # Registered earlier but its token file is lost: a fresh enrollment token is needed.
            reg = _call(http, "POST", f"/sites/{known[name]['id']}/rotate", token)
        else:
            reg = _call(http, "POST", "/sites", token, json={"name": name})
            ids[name] = reg["id"]
        atomic_write_text(
            env_file, f"FEDSEG_SITE_ENROLLMENT_TOKEN={reg['enrollment_token']}\n", mode=0o600
        )
    return ids


def wait_enrolled(
    http: httpx.Client, token: str, names: list[str], timeout_s: float, poll_s: float = 2.0
) -> list[str]:
    """Site ids of ``names`` once all of them are enrolled."""
    deadline = time.monotonic() + timeout_s
    while True:
        sites = {s["name"]: s for s in _call(http, "GET", "/sites", token)}
        if all(sites.get(n, {}).get("status") == "enrolled" for n in names):
            return sorted(sites[n]["id"] for n in names)
        if time.monotonic() > deadline:
            waiting = [n for n in names if sites.get(n, {}).get("status") != "enrolled"]
            raise BootstrapError(f"sites not enrolled after {timeout_s:.0f} s: {waiting}")
        time.sleep(poll_s)


def start_experiment(http: httpx.Client, token: str, site_ids: list[str], rounds: int) -> str:
    """Create and start the demo experiment on ``site_ids``; return its id."""
    body = {
        "name": "compose-demo",
        "spec": DEMO_SPEC,
        "rounds": rounds,
        "min_sites": len(site_ids),
        "sites": site_ids,
        "train": {"local_epochs": 1, "batch_size": 4},
    }
    made = _call(http, "POST", "/experiments", token, json=body)
    _call(http, "POST", f"/experiments/{made['id']}/start", token)
    return str(made["id"])


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """A refusal is one line on stderr and exit code 1, not a traceback."""
    try:
        yield
    except (BootstrapError, httpx.HTTPError) as exc:
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
    out.mkdir(parents=True, exist_ok=True)
    with _refusals(), _client(url, ca) as http:
        wait_healthy(http)
        token = ensure_researcher(http, admin_token_file.read_text().strip(), out, researcher)
        ids = ensure_sites(http, token, out, site)
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
    token = (out / RESEARCHER_TOKEN).read_text().strip()
    with _refusals(), _client(url, ca) as http:
        site_ids = wait_enrolled(http, token, site, enroll_timeout_s)
        exp_id = start_experiment(http, token, site_ids, rounds)
    atomic_write_text(out / EXPERIMENT_ID, exp_id)
    typer.echo(f"experiment {exp_id} started on {len(site_ids)} sites, {rounds} rounds")


if __name__ == "__main__":
    bootstrap_app()
