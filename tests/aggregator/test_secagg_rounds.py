"""Secure aggregation through the service: 5 sites, one dropping mid-round, against plain FedAvg.

The sites run the real site-side protocol (``site_agent.federation.uploads.secagg_upload``, with the privacy guard
on the client) in threads against the in-memory aggregator; the test steps the orchestrator.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr

from aggregator.api.deps import Services
from data_specs.privacy.secagg_site import SecAggSite
from data_specs.privacy.secagg_wire import AdvertsOut, KeysIn, SharesIn, by_index
from data_specs.task_spec import expected_tensors
from data_specs.weights.bundle import decode_bundle
from data_specs.wire import SiteMetrics, TaskAssignment
from site_agent.federation.client import AggregatorClient
from site_agent.federation.privacy import OutboundGuard
from site_agent.federation.uploads.secagg_upload import SecAggUpload, masked_input
from tests.aggregator.helpers import API, Federation, update_bundle

NAMES = ["site-a", "site-b", "site-c", "site-d", "site-e"]
COUNTS = {"site-a": 40, "site-b": 12, "site-c": 77, "site-d": 5, "site-e": 30}
DROPPING = "site-d"


@pytest.fixture
def fed5(client: Any) -> Federation:
    return Federation.create(client, NAMES)


GUARD = OutboundGuard()  # one guard on the shared in-memory client checks every site's requests


def _site_client(fed: Federation, name: str) -> AggregatorClient:
    return AggregatorClient(fed.client, token=SecretStr(fed.sites[name][1]), guard=GUARD)


def _drop_after_sharing(fed: Federation, name: str, task: TaskAssignment) -> None:
    """Advertise and share like a site, then give up before uploading (a mid-round dropout)."""
    assert task.secagg is not None
    site = SecAggSite(task.secagg.index, task.secagg.params())
    base = f"{API}/tasks/{task.task_id}/secagg"
    advert = site.advertise()
    keys = KeysIn(c_public=advert.c_public.hex(), s_public=advert.s_public.hex())
    assert (
        fed.client.post(f"{base}/keys", json=keys.model_dump(), headers=fed.sh(name)).status_code
        == 204
    )
    while (r := fed.client.get(f"{base}/keys", headers=fed.sh(name))).status_code == 204:
        threading.Event().wait(0.05)
    adverts = AdvertsOut.model_validate(r.json())
    boxes = site.share({a.index: a.advert() for a in adverts.adverts})
    body = SharesIn(shares=by_index(boxes)).model_dump()
    assert fed.client.post(f"{base}/shares", json=body, headers=fed.sh(name)).status_code == 204
    while fed.client.get(f"{base}/inbox", headers=fed.sh(name)).status_code == 204:
        threading.Event().wait(0.05)
    r = fed.client.post(
        f"{API}/tasks/{task.task_id}/failure",
        json={"reason": "local training failed"},
        headers=fed.sh(name),
    )
    assert r.status_code == 200, r.text


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_five_sites_one_dropping_mid_round_match_plain_fedavg(
    fed5: Federation, services: Services, tmp_path: Path
) -> None:
    exp = fed5.create_experiment(
        rounds=1, min_sites=3, privacy={"secure_aggregation": {"threshold": 3}}
    )
    fed5.start(exp)
    services.orchestrator.step()
    tasks = {n: TaskAssignment.model_validate(fed5.next_task(n)) for n in NAMES}
    assert sorted(t.secagg.index for t in tasks.values() if t.secagg) == [1, 2, 3, 4, 5]
    model = fed5.model("site-a", tasks["site-a"].task_id)
    theta = decode_bundle(model).tensors
    bodies = {
        n: update_bundle(
            model, site=n, round_number=1, num_samples=COUNTS[n], spec_hash=t.spec_hash
        )
        for n, t in tasks.items()
    }
    receipts: dict[str, Any] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            task = tasks[name]
            if name == DROPPING:
                _drop_after_sharing(fed5, name, task)
                return
            client = _site_client(fed5, name)
            client.guard.allow_keys(task.spec_hash, expected_tensors(task.spec))
            vector = masked_input(task, bodies[name], theta, COUNTS[name], np.random.default_rng(1))
            receipts[name] = SecAggUpload(client, task, poll_s=0.05).run(
                vector, num_samples=COUNTS[name], metrics=SiteMetrics(train_loss=0.5)
            )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in NAMES]
    for t in threads:
        t.start()
    give_up = time.monotonic() + 240
    while any(t.is_alive() for t in threads) and time.monotonic() < give_up:
        services.orchestrator.step()
        threading.Event().wait(0.05)
    services.orchestrator.step()
    fed5.client.event_hooks = {"request": [], "response": []}  # the researcher's calls below
    assert not errors, errors
    assert all(r.accepted for r in receipts.values()) and len(receipts) == 4
    rnd = fed5.rounds(exp)[0]
    assert rnd["status"] == "closed", rnd
    statuses = {s["site_name"]: s["status"] for s in rnd["sites"]}
    assert statuses[DROPPING] == "failed" and list(statuses.values()).count("accepted") == 4
    new = decode_bundle(fed5.round_model(exp, 1)).tensors
    survivors = [n for n in NAMES if n != DROPPING]
    weights = [COUNTS[n] for n in survivors]
    floats = [k for k, v in theta.items() if v.dtype.kind == "f"]
    worst = 0.0
    for k in floats:
        diffs = [
            decode_bundle(bodies[n]).tensors[k].astype(np.float64) - theta[k] for n in survivors
        ]
        expected = theta[k] + np.average(np.stack(diffs), axis=0, weights=weights)
        worst = max(worst, float(np.max(np.abs(new[k] - expected))))
    setup = tasks["site-a"].secagg
    assert setup is not None
    # each survivor's stochastic rounding moves the sum by < 1 ring step; float32 adds a little
    tolerance = len(survivors) * setup.params().scale.step(sum(weights)) + 1e-6
    assert worst <= tolerance  # a wrong unmasking is off by whole masks, uniform in the ring
    _assert_no_individual_update_stored(services, bodies, theta)


def _assert_no_individual_update_stored(
    services: Services, bodies: dict[str, bytes], theta: dict[str, np.ndarray]
) -> None:
    """Aggregator side of the privacy guard: no blob holds a site's update, raw or as a difference."""
    root = services.blobs.root
    stored = [p.read_bytes() for p in root.rglob("*") if p.is_file()]
    assert stored
    key = max((k for k, v in theta.items() if v.dtype.kind == "f"), key=lambda k: theta[k].size)
    for body in bodies.values():
        weights = decode_bundle(body).tensors[key].astype(np.float32)
        probes = [weights.tobytes()[:64], (weights - theta[key]).astype(np.float32).tobytes()[:64]]
        for blob in stored:
            assert body not in blob
            assert not any(p in blob for p in probes)
