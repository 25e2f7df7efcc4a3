"""Stopping the server answers every waiting long poll with 204 at once, quietly.

Before, uvicorn waited its graceful-shutdown timeout for the polls, then cancelled each one,
and every cancelled poll logged a full traceback ("Exception in ASGI application").
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from aggregator.api.app import create_app
from aggregator.http_server import uvicorn_config
from aggregator.settings import AggregatorSettings
from tests.aggregator.e2e_helpers import free_port, serve_in_thread
from tests.aggregator.helpers import ADMIN_TOKEN, API, Federation

POLLS = 24


@pytest.mark.slow  # a real server on loopback
def test_stopping_answers_waiting_polls_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = AggregatorSettings(
        data_dir=tmp_path / "agg",
        admin_token=ADMIN_TOKEN,
        port=free_port(),
        orchestrator_enabled=False,
    )
    app = create_app(settings)
    config = uvicorn_config(
        app, settings, log_level="warning", on_shutdown=app.state.services.board.close
    )
    base = f"http://127.0.0.1:{settings.port}"
    caplog.set_level(logging.INFO)
    with serve_in_thread(config) as server, httpx.Client(base_url=base, timeout=30) as client:
        fed = Federation.create(client, [f"site-{i}" for i in range(POLLS)])

        def poll(name: str) -> tuple[int, float]:
            r = httpx.get(f"{base}{API}/tasks/next?wait=60", headers=fed.sh(name), timeout=30)
            return r.status_code, time.monotonic()

        with ThreadPoolExecutor(POLLS) as pool:
            answers = [pool.submit(poll, name) for name in fed.sites]
            board = app.state.services.board
            deadline = time.monotonic() + 20
            while len(board.waiting_sites()) < POLLS:  # every poll is waiting
                assert time.monotonic() < deadline, board.waiting_sites()
                time.sleep(0.05)
            assert not any(a.done() for a in answers)
            stopping = time.monotonic()
            server.should_exit = True
            results = [a.result(timeout=30) for a in answers]
    assert {status for status, _ in results} == {204}
    # Well inside uvicorn's graceful-shutdown timeout (5 s), after which it would cancel them.
    assert max(at for _, at in results) - stopping < 2.5
    assert "Exception in ASGI application" not in caplog.text
    assert "timeout graceful shutdown exceeded" not in caplog.text
