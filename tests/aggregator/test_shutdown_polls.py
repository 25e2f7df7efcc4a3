"""Stopping the server answers every waiting long poll with 204 at once, quietly.

Before, uvicorn waited its graceful-shutdown timeout (5 s) for the polls, then cancelled each
one, and every cancelled poll logged a full traceback ("Exception in ASGI application"). Polls
whose client had already gone (a benchmark's sites closing their connections) were woken by
nothing else.
"""

from __future__ import annotations

import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from aggregator.api.app import create_app
from aggregator.http_server import Server, uvicorn_config
from aggregator.settings import AggregatorSettings
from tests.aggregator.e2e_helpers import free_port, serve_in_thread
from tests.aggregator.helpers import ADMIN_TOKEN, API, Federation

POLLS = 24


def _server(tmp_path: Path) -> tuple[AggregatorSettings, Any, Any, Server]:
    """An app without rounds and the uvicorn server to run it (``serve_in_thread``)."""
    settings = AggregatorSettings(
        data_dir=tmp_path / "agg",
        admin_token=ADMIN_TOKEN,
        port=free_port(),
        orchestrator_enabled=False,
    )
    app = create_app(settings)
    config = uvicorn_config(app, settings, log_level="warning")
    return settings, app, config, Server(config, on_shutdown=app.state.services.board.close)


def wait_for_pollers(board: object, count: int) -> None:
    deadline = time.monotonic() + 20
    while len(board.waiting_sites()) < count:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, board.waiting_sites()  # type: ignore[attr-defined]
        time.sleep(0.05)


@pytest.mark.slow  # a real server on loopback
@pytest.mark.parametrize("clients_leave_first", [False, True])
def test_stopping_answers_waiting_polls_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, clients_leave_first: bool
) -> None:
    settings, app, config, server = _server(tmp_path)
    base = f"http://127.0.0.1:{settings.port}"
    board = app.state.services.board
    caplog.set_level(logging.INFO)
    with serve_in_thread(config, server), httpx.Client(base_url=base, timeout=30) as client:
        fed = Federation.create(client, [f"site-{i}" for i in range(POLLS)])
        if clients_leave_first:  # raw requests, then the sockets closed under the polls
            socks = []
            for name in fed.sites:
                sock = socket.create_connection(("127.0.0.1", settings.port), timeout=10)
                token = fed.sh(name)["Authorization"]
                sock.sendall(
                    f"GET {API}/tasks/next?wait=60 HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: {token}\r\n\r\n".encode()
                )
                socks.append(sock)
            wait_for_pollers(board, POLLS)
            for sock in socks:
                sock.close()
            time.sleep(0.3)
            stopping = time.monotonic()
            server.should_exit = True
            deadline = stopping + 20
            while not board.closed or server.server_state.tasks:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            finished = time.monotonic()
        else:

            def poll(name: str) -> tuple[int, float]:
                r = httpx.get(f"{base}{API}/tasks/next?wait=60", headers=fed.sh(name), timeout=30)
                return r.status_code, time.monotonic()

            with ThreadPoolExecutor(POLLS) as pool:
                answers = [pool.submit(poll, name) for name in fed.sites]
                wait_for_pollers(board, POLLS)
                assert not any(a.done() for a in answers)
                stopping = time.monotonic()
                server.should_exit = True
                results = [a.result(timeout=30) for a in answers]
            assert {status for status, _ in results} == {204}
            finished = max(at for _, at in results)
    # Well inside uvicorn's graceful-shutdown timeout (5 s), after which it would cancel them.
    assert finished - stopping < 2.5
    assert "Exception in ASGI application" not in caplog.text
    assert "timeout graceful shutdown exceeded" not in caplog.text


def _waiting(metrics: object) -> float:
    value = metrics.registry.get_sample_value("fedseg_long_polls_waiting")  # type: ignore[attr-defined]
    return float(value or 0.0)


@pytest.mark.slow  # a real server on loopback
def test_a_long_poll_ends_when_its_site_leaves(tmp_path: Path) -> None:
    """A restarted agent, or a proxy that cut the connection, leaves no poll waiting out its
    60 s (one woken meanwhile would hand a task, and its model, to nobody)."""
    settings, app, config, server = _server(tmp_path)
    metrics = app.state.services.metrics
    base = f"http://127.0.0.1:{settings.port}"
    with serve_in_thread(config, server), httpx.Client(base_url=base, timeout=30) as client:
        fed = Federation.create(client, ["site-a", "site-b", "site-c"])
        socks = []
        for name in fed.sites:
            sock = socket.create_connection(("127.0.0.1", settings.port), timeout=10)
            sock.sendall(
                f"GET {API}/tasks/next?wait=60&model=1 HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: {fed.sh(name)['Authorization']}\r\n\r\n".encode()
            )
            socks.append(sock)
        deadline = time.monotonic() + 20
        while _waiting(metrics) < 3:
            assert time.monotonic() < deadline, _waiting(metrics)
            time.sleep(0.05)
        socks.pop().close()  # one site leaves
        deadline = time.monotonic() + 5
        while _waiting(metrics) > 2:
            assert time.monotonic() < deadline, "the poll of a closed connection still waits"
            time.sleep(0.02)
        time.sleep(0.3)
        assert _waiting(metrics) == 2  # the others wait on
        for sock in socks:
            sock.close()
        deadline = time.monotonic() + 5
        while _waiting(metrics) > 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.should_exit = True
