"""A live aggregator on 127.0.0.1 with fake sites that really poll, download and upload over HTTP.

The sites do not train (the browser tier checks the dashboard, not learning): each sends the
global model moved a little (``tests.aggregator.helpers.update_bundle``) with plausible,
reproducible metrics that rise with the round, as a small federation on synthetic data would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from aggregator.api.app import create_app
from aggregator.api.deps import Services
from aggregator.settings import AggregatorSettings
from tests.aggregator.e2e_helpers import free_port
from tests.aggregator.helpers import (
    ADMIN_TOKEN,
    API,
    TINY_SPEC,
    bearer,
    update_bundle,
    upload_headers,
)


def site_metrics(site_index: int, round_number: int) -> dict[str, float]:
    """Dice that climbs with the round; the personal model a little above the update, the
    global model a little below (what a personalising site reports)."""
    base = 0.35 + 0.08 * site_index
    dice = min(0.95, base + 0.12 * round_number)
    return {
        "train_loss": round(1.2 / (1 + round_number) + 0.05 * site_index, 4),
        "val_dice": round(dice, 4),
        "val_dice_personal": round(min(0.97, dice + 0.04), 4),
        "val_dice_global": round(dice - 0.06, 4),
        "train_seconds": 0.05,
    }


@dataclass
class LiveFederation:
    """The server's URL and services, the researcher's token and the sites' ids."""

    url: str
    services: Services
    researcher_token: str
    sites: dict[str, str] = field(default_factory=dict)  # name -> site id
    site_tokens: dict[str, str] = field(default_factory=dict)  # name -> site token
    http: httpx.Client | None = None

    def create_experiment(self, name: str, rounds: int = 3, **extra: Any) -> str:
        assert self.http is not None
        body = {
            "name": name,
            "spec": TINY_SPEC.model_dump(mode="json"),
            "rounds": rounds,
            "min_sites": len(self.sites),
            "round_deadline_s": 120,
            "train": {"personalization": {"method": "iopfl", "alpha": 0.1}},
            **extra,
        }
        r = self.http.post(f"{API}/experiments", json=body, headers=bearer(self.researcher_token))
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def start(self, experiment_id: str) -> None:
        assert self.http is not None
        r = self.http.post(
            f"{API}/experiments/{experiment_id}/start", headers=bearer(self.researcher_token)
        )
        assert r.status_code == 200, r.text

    def wait_status(self, experiment_id: str, status: str, timeout: float = 60) -> None:
        assert self.http is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.http.get(
                f"{API}/experiments/{experiment_id}", headers=bearer(self.researcher_token)
            )
            if r.json()["status"] == status:
                return
            time.sleep(0.1)
        raise AssertionError(f"experiment {experiment_id} did not become {status}")


def _fake_site(url: str, token: str, name: str, index: int, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, headers=bearer(token), timeout=30) as client:
        while not stop.is_set():
            try:
                r = client.get(f"{API}/tasks/next", params={"wait": 1})
                if r.status_code != 200:
                    continue
                task = r.json()
                model = client.get(f"{API}/tasks/{task['task_id']}/model").content
                body = update_bundle(
                    model,
                    site=name,
                    round_number=task["round"],
                    num_samples=10 + 5 * index,
                    spec_hash=task["spec_hash"],
                )
                metrics = site_metrics(index, task["round"])
                time.sleep(0.1 * (index + 1))  # sites finish at different times (the timeline)
                client.put(
                    f"{API}/tasks/{task['task_id']}/update",
                    content=body,
                    headers=upload_headers(token, body, 10 + 5 * index, metrics),
                )
            except httpx.HTTPError:
                time.sleep(0.2)  # the server is stopping


@contextmanager
def live_federation(data_dir: Path, site_names: list[str]) -> Iterator[LiveFederation]:
    """Start uvicorn on a free loopback port, a researcher and one fake site thread per name."""
    from data_specs.task_spec import build_unet

    # Creating an experiment builds the spec's U-Net: import torch and MONAI here, outside any
    # HTTP timeout (tens of seconds on a loaded 2-core machine).
    build_unet(TINY_SPEC)
    settings = AggregatorSettings(
        data_dir=data_dir,
        admin_token=ADMIN_TOKEN,
        orchestrator_interval_s=0.2,
        sqlite_synchronous="NORMAL",
    )
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    workers: list[threading.Thread] = []
    with httpx.Client(base_url=url, timeout=120) as http:  # a loaded CI machine is slow
        r = http.post(f"{API}/researchers", json={"name": "alice"}, headers=bearer(ADMIN_TOKEN))
        assert r.status_code == 201, r.text
        fed = LiveFederation(url, app.state.services, r.json()["token"], http=http)
        for i, name in enumerate(site_names):
            reg = http.post(
                f"{API}/sites", json={"name": name}, headers=bearer(fed.researcher_token)
            )
            enrolled = http.post(
                f"{API}/sites/enroll",
                json={
                    "enrollment_token": reg.json()["enrollment_token"],
                    "accept_experiments": ["*"],
                },
            ).json()
            fed.sites[name] = enrolled["site_id"]
            fed.site_tokens[name] = enrolled["site_token"]
            worker = threading.Thread(
                target=_fake_site,
                args=(url, enrolled["site_token"], name, i, stop),
                daemon=True,
            )
            worker.start()
            workers.append(worker)
        try:
            yield fed
        finally:
            stop.set()
            for worker in workers:
                worker.join(timeout=5)
            server.should_exit = True
            thread.join(timeout=10)


def seed_history(fed: LiveFederation, *, rounds: int, sites: int) -> str:
    """An experiment whose database holds ``rounds`` closed rounds of ``sites`` sites each.

    Written straight into the aggregator's database (running that many rounds would take
    minutes); the rows are what the orchestrator writes, so every API reads them as usual.
    """
    from aggregator.storage.db.models import Experiment, Round, Task, utcnow

    assert fed.http is not None
    names = [f"hospital-{i:02d}" for i in range(sites)]
    site_ids = []
    for name in names:
        r = fed.http.post(f"{API}/sites", json={"name": name}, headers=bearer(fed.researcher_token))
        assert r.status_code == 201, r.text
        site_ids.append(r.json()["id"])
    exp_id = fed.create_experiment("history-200x20", rounds=rounds, min_sites=1)
    start = utcnow() - timedelta(hours=rounds)
    with fed.services.database.session() as session:
        exp = session.get(Experiment, exp_id)
        assert exp is not None
        exp.status, exp.current_round, exp.started_at = "completed", rounds, start
        exp.participants = site_ids
        for n in range(1, rounds + 1):
            opened = start + timedelta(minutes=n)
            rnd = Round(
                experiment_id=exp_id,
                number=n,
                attempt=0,
                status="closed",
                sampled=site_ids,
                opened_at=opened,
                deadline_at=opened + timedelta(hours=1),
                closed_at=opened + timedelta(seconds=50),
            )
            session.add(rnd)
            session.flush()
            for i, site_id in enumerate(site_ids):
                metrics = site_metrics(i % 8, n)
                metrics["val_dice"] = round(0.3 + 0.6 * (1 - 0.98**n) - 0.01 * (i % 8), 4)
                metrics["val_dice_personal"] = round(metrics["val_dice"] + 0.03, 4)
                metrics["val_dice_global"] = round(metrics["val_dice"] - 0.05, 4)
                session.add(
                    Task(
                        round_id=rnd.id,
                        experiment_id=exp_id,
                        site_id=site_id,
                        round_number=n,
                        status="accepted",
                        seed=n,
                        model_sha256="0" * 64,
                        model_size=1000,
                        created_at=opened,
                        delivered_at=opened + timedelta(seconds=1 + i % 5),
                        bytes_down=1000,
                        bytes_up=1000,
                        num_samples=20,
                        metrics=metrics,
                        reported_at=opened + timedelta(seconds=20 + i),
                    )
                )
        session.commit()
    return exp_id
