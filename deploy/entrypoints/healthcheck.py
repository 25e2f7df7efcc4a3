"""Container health checks: ``python -m deploy.entrypoints.healthcheck aggregator|site`` (exit 0 = healthy).

Docker runs these inside the container every interval, so they are cheap, print one line, and
never print a token. The aggregator check asks its own ``/healthz`` over loopback; the site agent
check validates the settings, that the work dir is writable and that a credential is at hand.
"""

from __future__ import annotations

import os
import ssl
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

healthcheck_app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Container health checks (exit 0 = healthy)."
)

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def check_aggregator(url: str, *, ca_bundle: Path | None = None, timeout_s: float = 5.0) -> str:
    """GET ``url`` and return a one-line verdict; raise ``RuntimeError`` unless it answers 200.

    Args:
        url: the health URL. Example: ``"https://127.0.0.1:8443/healthz"``.
        ca_bundle: CA to verify the server with. Default None: for a loopback URL the container
            checks itself and the certificate (issued for the public name) is not verified; for
            any other host the system trust store is used.
        timeout_s: request timeout. Default 5.
    """
    host = urlsplit(url).hostname or ""
    context: ssl.SSLContext | None = None
    if url.startswith("https://"):
        if ca_bundle is not None and not ca_bundle.is_file():
            raise RuntimeError(f"expected a CA bundle at {ca_bundle}, found nothing")
        if ca_bundle is not None:
            context = ssl.create_default_context(cafile=str(ca_bundle))
        elif host in _LOOPBACK:
            # Talking to ourselves: no credential is sent and only the status code is read.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = ssl.create_default_context()
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as resp:
            status = resp.status
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeError(f"aggregator not healthy at {url}: {exc}") from exc
    if status != 200:
        raise RuntimeError(f"aggregator at {url} answered {status}, expected 200")
    return f"aggregator healthy at {url}"


def check_site(config_file: Path | None = None) -> str:
    """Check the site agent's settings, work dir and credential; return a one-line verdict.

    Args:
        config_file: optional ``KEY=VALUE`` settings file, as ``fedseg site run`` takes it.

    Raises:
        RuntimeError: settings invalid, work dir not writable, or no token of any kind.
    """
    from site_agent.errors import SiteAgentError
    from site_agent.federation.workdir import WorkDir
    from site_agent.settings import SiteSettings

    try:
        settings = SiteSettings.load(config_file)
        settings.require_aggregator()
        work = WorkDir(settings.work_dir)
        work.ensure()
        has_token = work.read_token() is not None
    except SiteAgentError as exc:
        raise RuntimeError(str(exc)) from exc
    try:
        with tempfile.NamedTemporaryFile(dir=settings.work_dir, prefix=".healthcheck."):
            pass
    except OSError as exc:
        raise RuntimeError(f"work dir {settings.work_dir} is not writable: {exc.strerror}") from exc
    if not (has_token or settings.site_token or settings.enrollment_token):
        raise RuntimeError(
            f"no credential: neither {work.token_path} nor FEDSEG_SITE_SITE_TOKEN nor "
            "FEDSEG_SITE_ENROLLMENT_TOKEN is set"
        )
    state = "enrolled" if has_token or settings.site_token else "waiting to enroll"
    return f"site agent healthy ({state}, work dir {settings.work_dir})"


@healthcheck_app.command("aggregator")
def aggregator(
    url: Annotated[
        str | None,
        typer.Option(
            envvar="FEDSEG_HEALTHCHECK_URL",
            help="Health URL to GET. Default https://127.0.0.1:$FEDSEG_AGG_PORT/healthz.",
        ),
    ] = None,
    ca_bundle: Annotated[Path | None, typer.Option(help="Verify the server with this CA.")] = None,
) -> None:
    """Exit 0 when the aggregator's /healthz answers 200."""
    port = os.environ.get("FEDSEG_AGG_PORT", "8443")
    target = url or f"https://127.0.0.1:{port}/healthz"
    _report(lambda: check_aggregator(target, ca_bundle=ca_bundle))


@healthcheck_app.command("site")
def site(
    config: Annotated[
        Path | None,
        typer.Option(envvar="FEDSEG_SITE_CONFIG", help="KEY=VALUE settings file, as for site run."),
    ] = None,
) -> None:
    """Exit 0 when the site agent's settings validate, its work dir is writable and it has a token."""
    _report(lambda: check_site(config))


def _report(check: Callable[[], str]) -> None:
    try:
        typer.echo(check())
    except RuntimeError as exc:
        typer.echo(f"unhealthy: {exc}", err=True)
        raise typer.Exit(code=1) from exc


if __name__ == "__main__":
    sys.exit(healthcheck_app())
