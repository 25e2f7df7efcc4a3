"""A real aggregator on 127.0.0.1 (uvicorn in a thread) and the researcher's side of a federation."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

ADMIN_TOKEN = "admin-token-for-tests-0123456789"


@dataclass
class LiveAggregator:
    """A running aggregator and a researcher's client to drive it."""

    url: str
    researcher: httpx.Client
    services: Any

    def add_site(self, name: str) -> tuple[str, str]:
        """Register a site; return ``(site_id, enrollment_token)``."""
        resp = self.researcher.post("/api/v1/sites", json={"name": name})
        resp.raise_for_status()
        return resp.json()["id"], resp.json()["enrollment_token"]

    def create_experiment(
        self, spec: Any, *, rounds: int, sites: list[str], train: dict, **extra: Any
    ) -> str:
        body = {
            "name": "e2e",
            "spec": spec.model_dump(mode="json"),
            "rounds": rounds,
            "sites": sites,
            "min_sites": len(sites),
            "train": train,
            **extra,
        }
        resp = self.researcher.post("/api/v1/experiments", json=body)
        assert resp.status_code == 201, resp.text
        experiment_id = resp.json()["id"]
        self.researcher.post(f"/api/v1/experiments/{experiment_id}/start").raise_for_status()
        return experiment_id

    def revoke(self, site_id: str) -> None:
        self.researcher.post(f"/api/v1/sites/{site_id}/revoke").raise_for_status()

    def abort(self, experiment_id: str) -> None:
        self.researcher.post(f"/api/v1/experiments/{experiment_id}/abort").raise_for_status()

    def experiment(self, experiment_id: str) -> dict:
        return self.researcher.get(f"/api/v1/experiments/{experiment_id}").raise_for_status().json()

    def rounds(self, experiment_id: str) -> list[dict]:
        return (
            self.researcher.get(f"/api/v1/experiments/{experiment_id}/rounds")
            .raise_for_status()
            .json()
        )

    def wait_for(self, experiment_id: str, status: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exp = self.experiment(experiment_id)
            if exp["status"] == status:
                return exp
            time.sleep(0.1)
        raise AssertionError(f"experiment still {exp['status']}, expected {status}")


@contextmanager
def live_aggregator(data_dir: Path, **settings: Any) -> Iterator[LiveAggregator]:
    """Start the aggregator on a free loopback port; stop it afterwards."""
    from aggregator.api.app import create_app
    from aggregator.settings import AggregatorSettings

    defaults: dict[str, Any] = {
        "orchestrator_interval_s": 0.05,
        "sqlite_synchronous": "NORMAL",
        "log_level": "WARNING",
        "max_long_poll_s": 2.0,
    }
    agg_settings = AggregatorSettings(
        data_dir=data_dir, admin_token=ADMIN_TOKEN, **{**defaults, **settings}
    )
    app = create_app(agg_settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the aggregator did not start")
        time.sleep(0.02)
    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    token = (
        admin.post("/api/v1/researchers", json={"name": "dr-test"})
        .raise_for_status()
        .json()["token"]
    )
    researcher = httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    try:
        yield LiveAggregator(url=url, researcher=researcher, services=app.state.services)
    finally:
        researcher.close()
        admin.close()
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
