"""Container health checks, and the site agent's refusal of plain HTTP (settings)."""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deploy.entrypoints.healthcheck import check_aggregator, check_site, healthcheck_app
from deploy.tls import make_dev_ca, make_server_cert
from site_agent.errors import SiteSettingsError
from site_agent.settings import SiteSettings

TOKEN = "enroll-me-please-0123456789"


@pytest.fixture
def site_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A clean ``FEDSEG_SITE_*`` environment with a work dir under ``tmp_path``."""
    for key in list(os.environ):
        if key.startswith("FEDSEG_SITE_"):
            monkeypatch.delenv(key)
    work = tmp_path / "work"
    monkeypatch.setenv("FEDSEG_SITE_WORK_DIR", str(work))
    monkeypatch.setenv("FEDSEG_SITE_AGGREGATOR_URL", "https://aggregator.example:8443")
    return work


def test_site_healthy_with_an_enrollment_token(
    site_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDSEG_SITE_ENROLLMENT_TOKEN", TOKEN)
    verdict = check_site()
    assert "waiting to enroll" in verdict and TOKEN not in verdict
    assert site_env.is_dir() and list(site_env.iterdir()) == []  # probe file removed


def test_site_healthy_once_enrolled(site_env: Path) -> None:
    site_env.mkdir()
    (site_env / "site_token").write_text("site-token-abcdef")
    assert "enrolled" in check_site()


def test_site_unhealthy_without_any_token(site_env: Path) -> None:
    result = CliRunner().invoke(healthcheck_app, ["site"])
    assert result.exit_code == 1 and "no credential" in result.output


def test_site_unhealthy_when_work_dir_is_not_a_folder(
    site_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDSEG_SITE_ENROLLMENT_TOKEN", TOKEN)
    site_env.parent.mkdir(exist_ok=True)
    site_env.write_text("a file where the work dir should be")
    with pytest.raises(RuntimeError):
        check_site()


def test_site_settings_refuse_plain_http(site_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDSEG_SITE_ENROLLMENT_TOKEN", TOKEN)
    monkeypatch.setenv("FEDSEG_SITE_AGGREGATOR_URL", "http://10.213.0.2:8080")
    with pytest.raises(SiteSettingsError, match="refusing a plain http://"):
        SiteSettings.load()
    result = CliRunner().invoke(healthcheck_app, ["site"])
    assert result.exit_code == 1 and "http://" in result.output and TOKEN not in result.output
    # Only the explicit development opt-in lets it through.
    monkeypatch.setenv("FEDSEG_SITE_ALLOW_INSECURE_HTTP", "true")
    assert SiteSettings.load().aggregator_url == "http://10.213.0.2:8080"


def test_site_settings_refuse_a_missing_ca_bundle(
    site_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDSEG_SITE_CA_BUNDLE", str(site_env.parent / "nope.pem"))
    with pytest.raises(SiteSettingsError, match="ca_bundle"):
        SiteSettings.load()


class _Status(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(params=["http", "https"])
def http_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A /healthz server on 127.0.0.1; over HTTPS its certificate names only the public host."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    if request.param == "https":
        certs = make_server_cert(make_dev_ca(tmp_path), tmp_path, ["fedseg.example.org"])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certs.cert_path, certs.key_path)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"{request.param}://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_aggregator_check(http_server: str) -> None:
    assert "healthy" in check_aggregator(f"{http_server}/healthz")
    with pytest.raises(RuntimeError, match="503"):
        check_aggregator(f"{http_server}/other")


def test_aggregator_check_fails_when_down() -> None:
    url = "http://127.0.0.1:9/healthz"  # discard port: nothing listens
    result = CliRunner().invoke(healthcheck_app, ["aggregator", "--url", url])
    assert result.exit_code == 1 and "not healthy" in result.output
