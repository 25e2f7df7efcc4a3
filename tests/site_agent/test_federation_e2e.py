"""Two site agents and a real aggregator on 127.0.0.1: rounds complete, and only weights leave.

The privacy guard test records every request the agents send at the httpx level (what goes on
the wire) and checks each body and header against what the contract allows.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from safetensors.numpy import load as st_load

from data_specs.manifests.fingerprint import DatasetFingerprint, compute_fingerprint
from data_specs.manifests.manifest import load_manifest
from data_specs.task_spec import expected_tensors
from data_specs.weights.bundle import read_header
from data_specs.wire import EnrollRequest, FailureReport, SiteMetrics
from site_agent.federation.loop import SiteAgent
from site_agent.federation.retry import Backoff
from site_agent.federation.task_runner import TaskOutcome
from site_agent.settings import SiteSettings
from tests.site_agent.conftest import TINY, write_site
from tests.site_agent.federation import live_aggregator

TRAIN = {
    "local_epochs": 1,
    "batch_size": 4,
    "lr": 0.01,
    "optimizer": "adam",
    "personalization": {"method": "iopfl", "alpha": 0.5},
}


def agent_settings(root: Path, url: str, token: str, **extra: object) -> SiteSettings:
    return SiteSettings.load(
        aggregator_url=url,
        allow_insecure_http=True,
        enrollment_token=token,
        manifest=str(root / "data" / "dataset.json"),
        work_dir=str(root / "work"),
        device="cpu",
        poll_wait_s=1,
        accept_experiments=["*"],
        **extra,
    )


def run_agents(agents: list[SiteAgent], max_tasks: int) -> list[object]:
    results: list[object] = [None] * len(agents)

    def work(i: int) -> None:
        try:
            results[i] = agents[i].run(max_tasks=max_tasks)
        except Exception as exc:  # surfaced by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(agents))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


class Recorder:
    """An httpx request hook keeping (method, path, headers, body) of every request sent."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []

    def __call__(self, request: httpx.Request) -> None:
        self.requests.append(
            (request.method, request.url.path, dict(request.headers), request.content)
        )


@pytest.mark.slow
def test_two_agents_run_rounds_and_send_nothing_but_weights(tmp_path) -> None:
    with live_aggregator(tmp_path / "agg") as agg:
        roots, recorders, agents, site_ids = [], [], [], []
        for i, name in enumerate(("hospital-a", "hospital-b")):
            root = tmp_path / name
            write_site(root / "data", seed=i, prefix=f"patient{4711 + i}", site_id=f"mri-{name}")
            site_id, token = agg.add_site(name)
            recorder = Recorder()
            http = httpx.Client(base_url=agg.url, event_hooks={"request": [recorder]}, timeout=30)
            settings = agent_settings(root, agg.url, token, share_personal=(i == 0))
            agents.append(SiteAgent(settings, http=http, backoff=Backoff(0.05, 0.2, 5)))
            roots.append(root)
            recorders.append(recorder)
            site_ids.append(site_id)
        for agent in agents:  # enroll with the hospitals' standing consent first
            agent.prepare()
        experiment_id = agg.create_experiment(TINY, rounds=2, sites=site_ids, train=TRAIN)
        results = run_agents(agents, max_tasks=2)
        assert all(r is not None and not isinstance(r, Exception) for r in results), results
        assert [r.outcomes for r in results] == [[TaskOutcome.ACCEPTED] * 2] * 2
        agg.wait_for(experiment_id, "completed")
        rounds = agg.rounds(experiment_id)
        assert [r["number"] for r in rounds] == [1, 2]
        for rnd in rounds:
            assert sorted(s["site_id"] for s in rnd["sites"]) == sorted(site_ids)
            for site in rnd["sites"]:
                assert site["num_samples"] == 6
                assert 0.0 <= site["metrics"]["val_dice"] <= 1.0
                assert site["metrics"]["num_val_cases"] == 2
        for root, site_id in zip(roots, site_ids, strict=True):  # the fingerprint arrived
            stored = agg.researcher.get(f"/api/v1/sites/{site_id}/fingerprint")
            fingerprint = compute_fingerprint(load_manifest(root / "data" / "dataset.json"))
            assert stored.status_code == 200 and stored.json() == fingerprint.model_dump(
                mode="json"
            )

    for root in roots:
        work = root / "work"
        assert stat.S_IMODE(os.stat(work / "site_token").st_mode) == 0o600
        assert not (work / "state.json").exists()
        assert (work / "personal" / experiment_id / "round_2.safetensors").is_file()
        assert (work / "global" / f"{experiment_id}.safetensors").is_file()
        assert list((work / "tensorboard").rglob("events.out.tfevents.*"))
        receipts = list((work / "tasks").glob("*/receipt.json"))
        assert len(receipts) == 2 and all(json.loads(r.read_text())["accepted"] for r in receipts)
        assert not list((work / "tasks").glob("*/*.safetensors"))  # cleaned after upload

    check_only_weights_left(recorders, roots)
    # The sharing site sends its personal model before its update, each round: after the last
    # update the round closes and personal models are taken for the latest task only.
    puts = [path for method, path, _, _ in recorders[0].requests if method == "PUT"]
    order = [p.rsplit("/", 1)[1] for p in puts if p.endswith(("/personal", "/update"))]
    assert order == ["personal", "update"] * 2


def check_only_weights_left(recorders: list[Recorder], roots: list[Path]) -> None:
    state_keys = set(expected_tensors(TINY))
    secrets: set[str] = set()
    for root in roots:
        manifest = json.loads((root / "data" / "dataset.json").read_text())
        for split in ("training", "validation", "test"):
            for case in manifest.get(split, []):
                for rel in case.values():
                    name = Path(rel).name
                    secrets |= {rel, name, name.split(".")[0]}
        secrets |= {"dataset.json", str(root), manifest["site_id"], "squares"}
    per_case = [v for root in roots for v in _per_case_values(root / "data")]
    routes = set()
    for recorder in recorders:
        assert recorder.requests
        for method, path, headers, body in recorder.requests:
            routes.add((method, path.rsplit("/", 1)[-1]))
            blob = (path + json.dumps(headers)).encode() + body
            leaked = [s for s in secrets if s.encode() in blob]
            assert not leaked, f"{method} {path} carries {leaked}"
            if "x-metrics" in headers:
                SiteMetrics.model_validate_json(headers["x-metrics"])  # aggregates only
            if not body:
                continue
            if path.endswith("/enroll"):
                EnrollRequest.model_validate_json(body)
            elif path.endswith("/sites/me/fingerprint"):
                DatasetFingerprint.model_validate_json(body)  # aggregates only, extra forbidden
                numbers = _numbers(json.loads(body))
                leaked_values = [v for v in per_case if np.isclose(numbers, v, rtol=1e-9).any()]
                assert not leaked_values, f"the fingerprint carries per-case values {leaked_values}"
            elif path.endswith("/failure"):
                FailureReport.model_validate_json(body)
            else:
                assert path.endswith(("/update", "/personal")), path
                header = read_header(body)
                assert set(header) - {"__metadata__"} == state_keys
                assert set(st_load(body)) == state_keys
    assert ("PUT", "update") in routes and ("PUT", "personal") in routes
    assert ("POST", "enroll") in routes and ("GET", "next") in routes
    assert ("GET", "model") not in routes  # every global model came with its task
    assert ("PUT", "fingerprint") in routes


def _per_case_values(data: Path) -> list[float]:
    """Per-case figures a careless fingerprint would carry: foreground mean, sd, sum, voxels."""
    manifest = json.loads((data / "dataset.json").read_text())
    out: list[float] = []
    for case in manifest["training"]:
        image = np.asarray(nib.load(data / case["image"]).dataobj, dtype=np.float64)
        label = np.asarray(nib.load(data / case["label"]).dataobj)
        fg = image[label > 0]
        out += [fg.mean(), fg.std(), fg.sum(), float(fg.size), float((label == 0).sum())]
        out += [fg.min(), fg.max(), float(np.median(fg))]
    return out


def _numbers(value: object) -> np.ndarray:
    if isinstance(value, dict):
        return np.concatenate([_numbers(v) for v in value.values()] or [np.zeros(0)])
    if isinstance(value, list):
        return np.concatenate([_numbers(v) for v in value] or [np.zeros(0)])
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return np.asarray([float(value)])
    return np.zeros(0)
