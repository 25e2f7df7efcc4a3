"""The namespace network itself: HTTPS by IP across namespaces, no listener at sites, clean removal."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deploy.launcher.netns import PrivateNetwork, netns_unavailable_reason, private_network
from deploy.tls import client_ssl_context, make_dev_ca, make_server_cert

pytestmark = pytest.mark.netns

PORT = 8443

# A stand-in aggregator: stdlib HTTPS on 0.0.0.0 that answers every GET with "ok".
_HTTPS_SERVER = """
import ssl, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a): pass
srv = ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[2], sys.argv[3])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"""

# A stand-in agent: one outbound HTTPS GET that verifies against the CA bundle.
_HTTPS_CLIENT = """
import sys, httpx
from deploy.tls import client_ssl_context
print(httpx.get(sys.argv[1], verify=client_ssl_context(sys.argv[2]), timeout=10).text)
"""


def _wait_https(url: str, ca: Path, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(url, verify=client_ssl_context(ca), timeout=2).raise_for_status()
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.slow  # a subprocess, a real server or real training
def test_https_by_ip_across_namespaces(federation_net: PrivateNetwork, tmp_path: Path) -> None:
    net = federation_net
    agg = net["aggregator"]
    certs = make_server_cert(make_dev_ca(tmp_path / "certs"), tmp_path / "certs", [agg.address])
    ca = tmp_path / "certs" / "ca.pem"
    server_argv = [sys.executable, "-c", _HTTPS_SERVER, str(PORT)]
    net.start("aggregator", [*server_argv, str(certs.cert_path), str(certs.key_path)])
    url = f"https://{agg.address}:{PORT}/healthz"
    _wait_https(url, ca)  # the researcher (root namespace) reaches the aggregator by IP

    assert f"0.0.0.0:{PORT}" in agg.listening_tcp()
    for role in ("site-a", "site-b"):
        site = net[role]
        out = site.run([sys.executable, "-c", _HTTPS_CLIENT, url, str(ca)], timeout=30)
        assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
        assert site.listening_tcp() == []
        # Sites are separate hosts: each sees only its own address, not the aggregator's.
        addrs = site.run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
        assert f"{site.address}/24" in addrs and agg.address not in addrs

    # Refused without the dev CA (the system store does not know it), even by the right IP.
    site = net["site-a"]
    plain = site.run([sys.executable, "-c", f"import httpx; httpx.get('{url}', timeout=10)"])
    assert plain.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in plain.stderr


@pytest.mark.slow  # a subprocess, a real server or real training
def test_everything_is_removed_even_after_a_failure(netns_ok: None) -> None:
    def names() -> set[str]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
        return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}

    def links() -> str:
        return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout

    before = names()
    with pytest.raises(RuntimeError, match="boom"), private_network(["x"], root_role="me") as net:
        made = set(net.namespaces)
        root_link = net.root_links[0]
        proc = net.start("x", ["sleep", "300"])
        assert made <= names() and root_link in links()
        raise RuntimeError("boom")
    assert proc.poll() is not None  # the process started in the namespace was stopped
    assert names() == before and not made & names()
    assert root_link not in links()


def test_unavailable_reason_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    # Non-root and a machine without iproute2 cannot be had here, so they are simulated.
    import deploy.launcher.netns as netns

    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    assert "need root" in (netns_unavailable_reason() or "")
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns.shutil, "which", lambda name: None)
    assert "iproute2" in (netns_unavailable_reason() or "")
