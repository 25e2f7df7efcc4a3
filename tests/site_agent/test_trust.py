"""The agent's TLS trust: FEDSEG_SITE_CA_BUNDLE plus the system store (a hospital's proxy CA).

A real TLS server on loopback presents a certificate of one dev CA; the handshake must verify
with that CA as the bundle, with that CA in the system store (``SSL_CERT_FILE``, as
``update-ca-certificates`` would provide it) while the bundle names another CA, and fail with
neither.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.tls import make_dev_ca, make_server_cert
from site_agent.federation.trust import agent_ssl_context


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS server on 127.0.0.1 that completes handshakes; yields its port and CA file."""
    ca = make_dev_ca(tmp_path / "proxy-ca", common_name="hospital inspection CA")
    cert = make_server_cert(ca, tmp_path / "server", ["127.0.0.1"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert_path, cert.key_path)
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1], ca.cert_path
    stop.set()
    thread.join(timeout=5)
    sock.close()


def handshake(port: int, ctx: ssl.SSLContext) -> None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        pass


def test_the_bundle_is_trusted(tls_server: tuple[int, Path], monkeypatch) -> None:
    port, ca = tls_server
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    handshake(port, agent_ssl_context(ca))


def test_the_system_store_is_trusted_besides_the_bundle(
    tls_server: tuple[int, Path], tmp_path: Path, monkeypatch
) -> None:
    port, proxy_ca = tls_server
    other = make_dev_ca(tmp_path / "aggregator-ca", common_name="aggregator private CA")
    monkeypatch.setenv("SSL_CERT_FILE", str(proxy_ca))  # the OS store, as the image sets it
    handshake(port, agent_ssl_context(other.cert_path))
    handshake(port, agent_ssl_context(None))


def test_an_unknown_ca_is_refused(
    tls_server: tuple[int, Path], tmp_path: Path, monkeypatch
) -> None:
    port, _ = tls_server
    other = make_dev_ca(tmp_path / "aggregator-ca", common_name="aggregator private CA")
    monkeypatch.setenv("SSL_CERT_FILE", str(other.cert_path))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "empty"))
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(port, agent_ssl_context(other.cert_path))
    ctx = agent_ssl_context(None)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2 and ctx.check_hostname
