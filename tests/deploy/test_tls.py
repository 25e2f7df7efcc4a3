"""Dev CA and server certificates: files, SANs, permissions, and real TLS handshakes over httpx."""

from __future__ import annotations

import ipaddress
import ssl
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from typer.testing import CliRunner

from deploy.tls import (
    TLSSetupError,
    client_ssl_context,
    deploy_app,
    load_ca,
    make_dev_ca,
    make_server_cert,
)


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """An HTTPS server on 127.0.0.1 with a dev certificate for 127.0.0.1 and aggregator.local."""
    ca = make_dev_ca(tmp_path / "certs")
    server = make_server_cert(ca, tmp_path / "certs", ["aggregator.local", "127.0.0.1"])
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(server.cert_path, server.key_path)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], ca.cert_path
    finally:
        httpd.shutdown()
        httpd.server_close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_modes_and_sans(tmp_path: Path) -> None:
    ca = make_dev_ca(tmp_path)
    server = make_server_cert(ca, tmp_path, ["aggregator.local", "10.213.7.2", "::1"])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ca-key.pem", "ca.pem", "server-key.pem", "server.pem"]  # no temp files left
    assert _mode(tmp_path / "ca-key.pem") == 0o600
    assert _mode(server.key_path) == 0o600
    assert _mode(server.cert_path) & 0o077 != 0o077  # certificates are public

    chain = x509.load_pem_x509_certificates(server.cert_path.read_bytes())
    assert len(chain) == 2 and chain[1] == ca.cert
    leaf = chain[0]
    leaf.verify_directly_issued_by(ca.cert)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["aggregator.local"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.213.7.2"),
        ipaddress.ip_address("::1"),
    ]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize("bad", [[], ["not a host"], ["exa_mple.org"], ["-lead.example"]])
def test_bad_hosts_are_refused(tmp_path: Path, bad: list[str]) -> None:
    ca = make_dev_ca(tmp_path)
    with pytest.raises(TLSSetupError, match="expected"):
        make_server_cert(ca, tmp_path / "srv", bad)
    assert not (tmp_path / "srv" / "server-key.pem").exists()


def test_load_ca_round_trip_and_mismatch(tmp_path: Path) -> None:
    ca = make_dev_ca(tmp_path / "a")
    assert load_ca(tmp_path / "a").cert == ca.cert
    make_dev_ca(tmp_path / "b")
    (tmp_path / "a" / "ca-key.pem").write_bytes((tmp_path / "b" / "ca-key.pem").read_bytes())
    with pytest.raises(TLSSetupError, match="not the private key"):
        load_ca(tmp_path / "a")
    with pytest.raises(TLSSetupError, match="expected a CA"):
        load_ca(tmp_path / "missing")


def test_https_by_ip_and_name_with_the_ca_bundle(https_server: tuple[int, Path]) -> None:
    port, ca_pem = https_server
    ctx = client_ssl_context(ca_pem)
    assert httpx.get(f"https://127.0.0.1:{port}/", verify=ctx).text == "hello"
    # The DNS SAN works too: connect to 127.0.0.1 but check the certificate against the name.
    transport = httpx.HTTPTransport(verify=ctx)
    with httpx.Client(transport=transport) as client:
        req = client.build_request("GET", f"https://127.0.0.1:{port}/")
        req.extensions["sni_hostname"] = "aggregator.local"
        assert client.send(req).status_code == 200


def test_https_refused_without_the_right_ca_or_name(
    https_server: tuple[int, Path], tmp_path: Path
) -> None:
    port, _ = https_server
    other = make_dev_ca(tmp_path / "other")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://127.0.0.1:{port}/", verify=client_ssl_context(other.cert_path))
    with pytest.raises(httpx.ConnectError):  # system trust store: a dev CA is never in it
        httpx.get(f"https://127.0.0.1:{port}/")


def test_cli_writes_and_reuses_the_ca(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "certs"
    first = runner.invoke(
        deploy_app, ["certs", str(out), "--host", "10.0.0.5", "--host", "agg.lan"]
    )
    assert first.exit_code == 0, first.output
    ca_before = (out / "ca.pem").read_bytes()
    leaf = x509.load_pem_x509_certificates((out / "server.pem").read_bytes())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["agg.lan"]

    again = runner.invoke(deploy_app, ["certs", str(out), "--host", "agg.lan"])
    assert again.exit_code == 0 and "reused" in again.output
    assert (out / "ca.pem").read_bytes() == ca_before
    load_ca(out).cert.public_key()  # key still matches
    x509.load_pem_x509_certificates((out / "server.pem").read_bytes())[0].verify_directly_issued_by(
        load_ca(out).cert
    )

    fresh = runner.invoke(deploy_app, ["certs", str(out), "--new-ca"])
    assert fresh.exit_code == 0 and (out / "ca.pem").read_bytes() != ca_before

    bad = runner.invoke(deploy_app, ["certs", str(out), "--host", "bad host"])
    assert bad.exit_code == 2 and "expected a DNS name or an IP address" in bad.output
    fresh_dir = tmp_path / "fresh"
    bad = runner.invoke(deploy_app, ["certs", str(fresh_dir), "--host", "ok.lan", "--host", "a b"])
    assert bad.exit_code == 2 and not fresh_dir.exists()  # nothing half-written
