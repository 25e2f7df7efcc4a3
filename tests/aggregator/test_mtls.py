"""Mutual TLS for site agents, over real TLS on loopback (uvicorn as ``fedseg aggregator serve``).

The dev CA of ``fedseg deploy certs`` signs site client certificates (``fedseg deploy site-cert``);
the aggregator verifies them (``FEDSEG_AGG_SITE_CA_CERTS``) and refuses a site request whose
certificate names another site, or that has none, while researchers connect without one.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from aggregator.api.app import create_app
from aggregator.http_server import uvicorn_config
from aggregator.settings import AggregatorSettings
from deploy.console.researcher_client import ResearcherClient
from deploy.tls import client_ssl_context, deploy_app, make_dev_ca, make_server_cert
from site_agent.errors import SiteAgentError
from site_agent.federation.client import AggregatorClient, make_http_client
from site_agent.federation.enrollment import enroll
from site_agent.federation.retry import Backoff
from site_agent.federation.workdir import WorkDir
from site_agent.settings import SiteSettings
from tests.aggregator.e2e_helpers import free_port, serve_in_thread

ADMIN = "admin-token-for-tests-0123456789"


@dataclass
class MtlsAggregator:
    url: str
    certs: Path
    researcher: ResearcherClient


@pytest.fixture
def aggregator(tmp_path: Path) -> Iterator[MtlsAggregator]:
    certs = tmp_path / "certs"
    make_server_cert(make_dev_ca(certs), certs, ["127.0.0.1"])
    settings = AggregatorSettings(
        data_dir=tmp_path / "agg",
        admin_token=ADMIN,
        host="127.0.0.1",
        port=free_port(),
        ssl_certfile=certs / "server.pem",
        ssl_keyfile=certs / "server-key.pem",
        site_ca_certs=certs / "ca.pem",
        orchestrator_enabled=False,
    )
    config = uvicorn_config(create_app(settings), settings, log_level="warning")
    with serve_in_thread(config):
        url = f"https://127.0.0.1:{settings.port}"
        # The researcher has no client certificate: CERT_OPTIONAL lets it in.
        with httpx.Client(
            base_url=url, verify=client_ssl_context(certs / "ca.pem"), timeout=60
        ) as http:
            researcher = ResearcherClient(http)
            researcher.create_researcher(ADMIN, "mtls-researcher")
            yield MtlsAggregator(url, certs, researcher)


def issue(ca_dir: Path, site: str) -> tuple[Path, Path]:
    """``fedseg deploy site-cert`` as an operator runs it."""
    result = CliRunner().invoke(deploy_app, ["site-cert", str(ca_dir), "--site", site])
    assert result.exit_code == 0, result.output
    return ca_dir / f"site-{site}.pem", ca_dir / f"site-{site}-key.pem"


def site_settings(agg: MtlsAggregator, work: Path, cert: tuple[Path, Path] | None, **kw: str):  # type: ignore[no-untyped-def]
    files = {"client_cert": str(cert[0]), "client_key": str(cert[1])} if cert else {}
    return SiteSettings.load(
        aggregator_url=agg.url,
        ca_bundle=str(agg.certs / "ca.pem"),
        work_dir=str(work),
        accept_experiments=["*"],
        **files,
        **kw,
    )


def try_enroll(settings: SiteSettings) -> None:
    with make_http_client(settings) as http:
        client = AggregatorClient(http, backoff=Backoff(initial=0.01, maximum=0.01, retries=0))
        enroll(client, settings, WorkDir(settings.work_dir))


def next_task(url: str, ca: Path, token: str, cert: tuple[Path, Path] | None) -> int:
    ctx = client_ssl_context(ca)
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    with httpx.Client(base_url=url, verify=ctx, timeout=60) as http:
        response = http.get(
            "/api/v1/tasks/next", params={"wait": 0}, headers={"Authorization": f"Bearer {token}"}
        )
    return response.status_code


@pytest.mark.slow  # a subprocess, a real server or real training
def test_site_certificate_must_name_the_site(aggregator: MtlsAggregator, tmp_path: Path) -> None:
    ca_pem = aggregator.certs / "ca.pem"
    reg_a = aggregator.researcher.register_site("hospital-a")
    reg_b = aggregator.researcher.register_site("hospital-b")
    cert_a, cert_b = issue(aggregator.certs, "hospital-a"), issue(aggregator.certs, "hospital-b")

    # Enrolment with another site's certificate, or none, is refused and spends nothing.
    for cert in (cert_a, None):
        settings = site_settings(
            aggregator, tmp_path / "b", cert, enrollment_token=reg_b.enrollment_token
        )
        with pytest.raises(SiteAgentError):
            try_enroll(settings)
    assert not (tmp_path / "b" / "site_token").exists()
    statuses = {s.name: s.status for s in aggregator.researcher.sites()}
    assert statuses == {"hospital-a": "registered", "hospital-b": "registered"}

    for name, reg, cert in (("a", reg_a, cert_a), ("b", reg_b, cert_b)):
        try_enroll(
            site_settings(aggregator, tmp_path / name, cert, enrollment_token=reg.enrollment_token)
        )
    token_a = (tmp_path / "a" / "site_token").read_text().strip()

    assert next_task(aggregator.url, ca_pem, token_a, cert_a) == 204
    assert next_task(aggregator.url, ca_pem, token_a, cert_b) == 403  # wrong site's certificate
    assert next_task(aggregator.url, ca_pem, token_a, None) == 401  # no certificate


@pytest.mark.slow  # a subprocess, a real server or real training
def test_certificate_from_another_ca_fails_the_handshake(
    aggregator: MtlsAggregator, tmp_path: Path
) -> None:
    reg = aggregator.researcher.register_site("hospital-x")
    rogue_ca = tmp_path / "rogue"
    make_dev_ca(rogue_ca)
    rogue = issue(rogue_ca, "hospital-x")  # the right name, the wrong CA
    settings = site_settings(
        aggregator, tmp_path / "x", rogue, enrollment_token=reg.enrollment_token
    )
    with pytest.raises(SiteAgentError):
        try_enroll(settings)
    ctx = client_ssl_context(aggregator.certs / "ca.pem")
    ctx.load_cert_chain(str(rogue[0]), str(rogue[1]))
    with (
        # TLS 1.3: the server refuses the certificate after the client's handshake finished, so
        # the client sees the connection dropped on its first read.
        pytest.raises((httpx.TransportError, ssl.SSLError)),
        httpx.Client(base_url=aggregator.url, verify=ctx) as http,
    ):
        http.get("/healthz").raise_for_status()
    assert [s.status for s in aggregator.researcher.sites()] == ["registered"]


def test_site_cert_command_refuses_bad_names(tmp_path: Path) -> None:
    make_dev_ca(tmp_path)
    result = CliRunner().invoke(deploy_app, ["site-cert", str(tmp_path), "--site", "a/../b"])
    assert result.exit_code == 2 and "expected a site name" in result.output
    assert not list(tmp_path.glob("site-*"))


def test_mutual_tls_needs_tls(tmp_path: Path) -> None:
    ca = make_dev_ca(tmp_path)
    with pytest.raises(ValueError, match="needs ssl_certfile"):
        AggregatorSettings(dev=True, site_ca_certs=ca.cert_path)
