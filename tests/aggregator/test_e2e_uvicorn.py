"""End to end on loopback: a real uvicorn server, a researcher and two fake sites speaking httpx."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from aggregator.api.app import create_app
from aggregator.settings import AggregatorSettings
from data_specs.constants import HEADER_SHA256
from data_specs.weights.bundle import decode_bundle
from tests.aggregator.e2e_helpers import free_port
from tests.aggregator.helpers import (
    ADMIN_TOKEN,
    API,
    TINY_SPEC,
    Federation,
    bearer,
    sha256,
    update_bundle,
    upload_headers,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    settings = AggregatorSettings(
        data_dir=tmp_path,
        admin_token=ADMIN_TOKEN,
        orchestrator_interval_s=0.2,
        sqlite_synchronous="NORMAL",
    )
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def run_site(
    base: str, token: str, name: str, results: dict[str, list[int]], stop: threading.Event
) -> None:
    """A fake site agent: long-poll, download, 'train', upload, until told to stop."""
    with httpx.Client(base_url=base, headers=bearer(token), timeout=30) as client:
        while not stop.is_set():
            r = client.get(f"{API}/tasks/next", params={"wait": 1})
            if r.status_code == 204:
                continue
            task = r.json()
            model = client.get(f"{API}/tasks/{task['task_id']}/model")
            assert model.headers[HEADER_SHA256] == sha256(model.content) == task["model_sha256"]
            n = 20 if name == "site-a" else 40
            body = update_bundle(
                model.content,
                site=name,
                round_number=task["round"],
                num_samples=n,
                spec_hash=task["spec_hash"],
            )

            def chunks(data: bytes = body) -> Iterator[bytes]:
                for i in range(0, len(data), 4096):
                    yield data[i : i + 4096]

            headers = {
                **upload_headers(token, body, n, {"train_loss": 0.3}),
                "Content-Length": str(len(body)),
            }
            receipt = client.put(
                f"{API}/tasks/{task['task_id']}/update", content=chunks(), headers=headers
            )
            assert receipt.status_code == 200, receipt.text
            assert receipt.json()["accepted"] is True
            results.setdefault(name, []).append(task["round"])


def test_two_sites_two_rounds_over_http(server: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        fed = Federation.create(client, ["site-a", "site-b"])
        exp = fed.create_experiment(rounds=2, min_sites=2)
        results: dict[str, list[int]] = {}
        stop = threading.Event()
        sites = [
            threading.Thread(
                target=run_site, args=(server, fed.sites[n][1], n, results, stop), daemon=True
            )
            for n in fed.sites
        ]
        for thread in sites:
            thread.start()
        fed.start(exp)
        deadline = time.monotonic() + 30
        while fed.experiment(exp)["status"] != "completed":
            assert time.monotonic() < deadline, fed.rounds(exp)
            time.sleep(0.1)
        stop.set()
        for thread in sites:
            thread.join(timeout=10)
        assert results == {"site-a": [1, 2], "site-b": [1, 2]}
        rounds = fed.rounds(exp)
        assert [r["status"] for r in rounds] == ["closed", "closed"]
        assert all(s["metrics"]["train_loss"] == 0.3 for r in rounds for s in r["sites"])
        final = client.get(f"{API}/experiments/{exp}/rounds/2/model", headers=fed.rh)
        assert final.headers[HEADER_SHA256] == sha256(final.content) == rounds[1]["model_sha256"]
        assert decode_bundle(final.content, spec_hash=TINY_SPEC.spec_hash()).meta.round == 2
        # Per-site series name hospitals: only the admin sees them.
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).text
        assert 'fedseg_rounds_total{outcome="closed"} 2.0' in metrics
        assert "fedseg_aggregation_seconds_count 2.0" in metrics
        assert 'fedseg_bytes_received_total{kind="update"}' in metrics
        # Per-site accounting agrees with the rounds API.
        for name in ("site-a", "site-b"):
            up = sum(s["bytes_up"] for r in rounds for s in r["sites"] if s["site_name"] == name)
            down = sum(
                s["bytes_down"] for r in rounds for s in r["sites"] if s["site_name"] == name
            )
            assert up > 0 and down > 0
            assert f'fedseg_site_bytes_up_total{{site="{name}"}} {float(up)}' in metrics
            assert f'fedseg_site_bytes_down_total{{site="{name}"}} {float(down)}' in metrics
