"""The site agent against a real HTTPS aggregator (uvicorn on 127.0.0.1, dev certificates).

It enrolls only when it verifies the aggregator with the configured CA bundle; a wrong CA or a
plain ``http://`` URL is refused before the one-time enrollment token is sent or spent.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from aggregator.api.app import create_app
from aggregator.settings import AggregatorSettings
from deploy.console.researcher_client import ResearcherClient
from deploy.launcher.processes import free_port
from deploy.tls import client_ssl_context, make_dev_ca, make_server_cert
from site_agent.cli import app as site_app
from site_agent.errors import SiteSettingsError, TLSVerificationError
from site_agent.federation.client import AggregatorClient, make_http_client
from site_agent.federation.enrollment import enroll
from site_agent.federation.retry import Backoff
from site_agent.federation.workdir import WorkDir
from site_agent.settings import SiteSettings

pytestmark = pytest.mark.slow  # real training, processes or servers: `make test` only

ADMIN = "admin-token-for-tests-0123456789"


@dataclass
class HttpsAggregator:
    url: str
    ca_pem: Path
    researcher: ResearcherClient


@pytest.fixture
def aggregator(tmp_path: Path) -> Iterator[HttpsAggregator]:
    """The aggregator app served by uvicorn over TLS on 127.0.0.1, in a thread."""
    certs = make_server_cert(make_dev_ca(tmp_path / "certs"), tmp_path / "certs", ["127.0.0.1"])
    settings = AggregatorSettings(data_dir=tmp_path / "agg", admin_token=ADMIN)
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        ssl_certfile=str(certs.cert_path),
        ssl_keyfile=str(certs.key_path),
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    url = f"https://127.0.0.1:{port}"
    http = httpx.Client(base_url=url, verify=client_ssl_context(tmp_path / "certs" / "ca.pem"))
    researcher = ResearcherClient(http)
    researcher.create_researcher(ADMIN, "tls-researcher")
    try:
        yield HttpsAggregator(url, tmp_path / "certs" / "ca.pem", researcher)
    finally:
        http.close()
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def site_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A clean ``FEDSEG_SITE_*`` environment; returns the work dir."""
    for key in list(os.environ):
        if key.startswith("FEDSEG_SITE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("FEDSEG_SITE_WORK_DIR", str(tmp_path / "work"))
    return tmp_path / "work"


def enroll_like_the_agent(**env: str) -> None:
    """What the agent does on first start: settings from the environment, its own HTTP client."""
    settings = SiteSettings.load(**{k.lower(): v for k, v in env.items()})
    with make_http_client(settings) as http:
        client = AggregatorClient(http, backoff=Backoff(initial=0.01, maximum=0.01, retries=0))
        enroll(client, settings, WorkDir(settings.work_dir))


def _causes(exc: BaseException | None) -> str:
    """Every message along an exception's chain of causes."""
    out = []
    while exc is not None:
        out.append(repr(exc))
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(out)


def test_enrolls_only_with_the_right_ca(
    aggregator: HttpsAggregator, site_env: Path, tmp_path: Path
) -> None:
    token = aggregator.researcher.register_site("hospital-tls").enrollment_token
    env = {"aggregator_url": aggregator.url, "enrollment_token": token}

    other_ca = make_dev_ca(tmp_path / "other").cert_path
    started = time.monotonic()
    with pytest.raises(TLSVerificationError, match="FEDSEG_SITE_CA_BUNDLE") as refused:
        enroll_like_the_agent(**env, ca_bundle=str(other_ca))
    assert "CERTIFICATE_VERIFY_FAILED" in _causes(refused.value)
    with pytest.raises(TLSVerificationError):  # the system trust store lacks the dev CA
        enroll_like_the_agent(**env)
    assert time.monotonic() - started < 10  # refused at once: a bad certificate is never retried
    assert not (site_env / "site_token").exists()
    assert [s.status for s in aggregator.researcher.sites()] == ["registered"]  # token not spent

    enroll_like_the_agent(**env, ca_bundle=str(aggregator.ca_pem))
    assert stat.S_IMODE((site_env / "site_token").stat().st_mode) == 0o600
    assert [s.status for s in aggregator.researcher.sites()] == ["enrolled"]


def test_plain_http_is_refused_before_any_request(
    aggregator: HttpsAggregator, site_env: Path
) -> None:
    token = aggregator.researcher.register_site("hospital-http").enrollment_token
    plain = aggregator.url.replace("https://", "http://")
    with pytest.raises(SiteSettingsError, match="refusing a plain http://"):
        enroll_like_the_agent(aggregator_url=plain, enrollment_token=token)
    # The CLI says the same, exits 2, and never prints the token.
    env = {"FEDSEG_SITE_AGGREGATOR_URL": plain, "FEDSEG_SITE_ENROLLMENT_TOKEN": token}
    result = CliRunner().invoke(site_app, ["enroll"], env=env)
    assert result.exit_code == 2 and "refusing a plain http://" in result.output
    assert token not in result.output
    assert [s.status for s in aggregator.researcher.sites()] == ["registered"]


def test_rotation_then_re_enrollment(aggregator: HttpsAggregator, site_env: Path) -> None:
    """The procedure of docs/hospital-it.md: rotate, the old token gets 401, enroll again."""
    researcher = aggregator.researcher
    reg = researcher.register_site("hospital-rot")
    common = {"aggregator_url": aggregator.url, "ca_bundle": str(aggregator.ca_pem)}
    enroll_like_the_agent(**common, enrollment_token=reg.enrollment_token)
    old = (site_env / "site_token").read_text()

    def next_task(token: str) -> int:
        return aggregator.researcher.http.get(
            "/api/v1/tasks/next", params={"wait": 0}, headers={"Authorization": f"Bearer {token}"}
        ).status_code

    assert next_task(old) == 204
    fresh = researcher.rotate_site(reg.id)
    assert next_task(old) == 401
    enroll_like_the_agent(**common, enrollment_token=fresh.enrollment_token)
    new = (site_env / "site_token").read_text()
    assert new != old and next_task(new) == 204
