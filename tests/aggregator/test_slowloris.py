"""Half-open connections (slowloris) are closed after the header read timeout; others still served.

Raw sockets against a real uvicorn on loopback served as ``fedseg aggregator serve`` serves it
(``aggregator.http_server.uvicorn_config``): 200 connections that send nothing or an unfinished
request head, and one that keeps trickling header bytes, must all be closed by the server soon
after ``header_timeout_s``, while a normal request still gets its answer.
"""

from __future__ import annotations

import select
import socket
import time
from pathlib import Path

import httpx
import pytest

from aggregator.api.app import create_app
from aggregator.http_server import uvicorn_config
from aggregator.settings import AggregatorSettings
from tests.aggregator.e2e_helpers import free_port, serve_in_thread

HEADER_TIMEOUT_S = 2.0


def closed_by_server(sock: socket.socket) -> bool:
    """True once the peer closed: a readable socket that reads EOF (or a reset)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(4096) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


@pytest.mark.slow  # a subprocess, a real server or real training
def test_half_open_connections_are_closed(tmp_path: Path) -> None:
    settings = AggregatorSettings(
        data_dir=tmp_path,
        dev=True,
        port=free_port(),
        header_timeout_s=HEADER_TIMEOUT_S,
        orchestrator_enabled=False,
    )
    config = uvicorn_config(create_app(settings), settings, log_level="warning")
    with serve_in_thread(config):
        address = ("127.0.0.1", settings.port)
        socks = []
        for i in range(200):
            sock = socket.create_connection(address, timeout=10)
            if i % 2:  # half of them start a request head and never finish it
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-a: ")
            socks.append(sock)
        trickle = socket.create_connection(address, timeout=10)
        trickle.sendall(b"GET /healthz HTTP/1.1\r\n")
        opened = time.monotonic()

        # Still open well before the timeout: the guard is a timeout, not a refusal.
        time.sleep(HEADER_TIMEOUT_S / 4)
        assert not any(closed_by_server(s) for s in socks[:20])
        # A complete request on a fresh connection is answered meanwhile.
        assert httpx.get(f"http://127.0.0.1:{settings.port}/healthz", timeout=30).status_code == 200

        open_socks = set(range(len(socks)))
        trickle_closed = False
        while (open_socks or not trickle_closed) and time.monotonic() - opened < 30:
            open_socks = {i for i in open_socks if not closed_by_server(socks[i])}
            if not trickle_closed:
                try:
                    trickle.sendall(b"X-b: 1\r\n")  # a header line every 0.2 s, never the end
                except OSError:
                    trickle_closed = True
                trickle_closed = trickle_closed or closed_by_server(trickle)
            time.sleep(0.2)
        elapsed = time.monotonic() - opened
        for sock in [*socks, trickle]:
            sock.close()
    assert not open_socks, f"{len(open_socks)} of 200 half-open connections still open"
    assert trickle_closed, "a client trickling header lines kept its connection"
    assert elapsed < 30
