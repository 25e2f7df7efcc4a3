"""Test helpers: a tiny spec, plausible updates made with numpy, and a researcher/site driver."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import numpy as np

from data_specs.constants import HEADER_METRICS, HEADER_NUM_SAMPLES, HEADER_SHA256, BundleKind
from data_specs.task_spec import TaskSpec
from data_specs.weights.bundle import BundleMeta, decode_bundle, encode_bundle

API = "/api/v1"
ADMIN_TOKEN = "admin-token-for-tests-0123456789"
TINY_SPEC = TaskSpec(spatial_dims=2, channels=(4, 8), strides=(2,), patch_size=(16, 16))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def plausible_weights(
    global_tensors: dict[str, np.ndarray], *, site: str, round_number: int, scale: float = 0.01
) -> dict[str, np.ndarray]:
    """Global weights moved a little, reproducibly per (site, round, key): what local SGD would send.

    Seeded per key because decoded bundles do not keep a stable key order.
    """
    out = {}
    for key, value in global_tensors.items():
        seed = int.from_bytes(
            hashlib.sha256(f"{site}:{round_number}:{key}".encode()).digest()[:4], "big"
        )
        rng = np.random.default_rng(seed)
        if value.dtype.kind == "f":
            step = rng.standard_normal(value.shape).astype(value.dtype) * np.asarray(
                scale, value.dtype
            )
            out[key] = np.asarray(value + step, dtype=value.dtype)
        else:
            out[key] = np.asarray(value + 3, dtype=value.dtype)
    return out


def update_bundle(
    model_bytes: bytes,
    *,
    site: str,
    round_number: int,
    num_samples: int,
    spec_hash: str,
    kind: BundleKind = BundleKind.FULL,
    scale: float = 0.01,
) -> bytes:
    """A full (or diff) update bundle trained from the downloaded global model bytes."""
    theta = decode_bundle(model_bytes).tensors
    theta = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in theta.items()}
    weights = plausible_weights(theta, site=site, round_number=round_number, scale=scale)
    if kind == BundleKind.DIFF:
        weights = {k: np.asarray(weights[k] - theta[k], dtype=theta[k].dtype) for k in weights}
    meta = BundleMeta(spec_hash=spec_hash, round=round_number, kind=kind, num_samples=num_samples)
    return encode_bundle(weights, meta)


def upload_headers(
    token: str, body: bytes, num_samples: int, metrics: dict[str, Any] | None = None
) -> dict[str, str]:
    headers = {
        **bearer(token),
        HEADER_SHA256: sha256(body),
        HEADER_NUM_SAMPLES: str(num_samples),
        "Content-Type": "application/octet-stream",
    }
    if metrics is not None:
        headers[HEADER_METRICS] = json.dumps(metrics)
    return headers


@dataclass
class Federation:
    """A researcher and enrolled sites on one aggregator, driven through its HTTP API."""

    client: httpx.Client | Any
    researcher_token: str = ""
    sites: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (site id, token)

    @classmethod
    def create(cls, client: Any, site_names: list[str], researcher: str = "alice") -> Federation:
        fed = cls(client)
        r = client.post(
            f"{API}/researchers", json={"name": researcher}, headers=bearer(ADMIN_TOKEN)
        )
        assert r.status_code == 201, r.text
        fed.researcher_token = r.json()["token"]
        for name in site_names:
            fed.add_site(name)
        return fed

    def add_site(self, name: str) -> str:
        r = self.client.post(f"{API}/sites", json={"name": name}, headers=self.rh)
        assert r.status_code == 201, r.text
        # These sites consent to every experiment (their agent's accept_experiments=["*"]);
        # tests/aggregator/test_consent.py covers sites that decide one by one.
        r = self.client.post(
            f"{API}/sites/enroll",
            json={"enrollment_token": r.json()["enrollment_token"], "accept_experiments": ["*"]},
        )
        assert r.status_code == 200, r.text
        self.sites[name] = (r.json()["site_id"], r.json()["site_token"])
        return r.json()["site_id"]

    @property
    def rh(self) -> dict[str, str]:
        return bearer(self.researcher_token)

    def sh(self, name: str) -> dict[str, str]:
        return bearer(self.sites[name][1])

    def create_experiment(self, **overrides: Any) -> str:
        body: dict[str, Any] = {
            "name": "tiny",
            "spec": TINY_SPEC.model_dump(mode="json"),
            "rounds": 2,
            "fraction": 1.0,
            "min_sites": 1,
            "seed": 7,
            "round_deadline_s": 600,
        }
        body.update(overrides)
        r = self.client.post(f"{API}/experiments", json=body, headers=self.rh)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def start(self, experiment_id: str) -> dict[str, Any]:
        r = self.client.post(f"{API}/experiments/{experiment_id}/start", headers=self.rh)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def start_first_round(self, services: Any, *, rounds: int = 1, min_sites: int = 3) -> str:
        """Create and start an experiment, and open its round 1 (one step of the in-process
        app's orchestrator, ``services.orchestrator``)."""
        exp = self.create_experiment(rounds=rounds, min_sites=min_sites)
        self.start(exp)
        services.orchestrator.step()
        return exp

    def next_task(self, name: str, wait: float = 0) -> dict[str, Any] | None:
        r = self.client.get(f"{API}/tasks/next", params={"wait": wait}, headers=self.sh(name))
        if r.status_code == 204:
            return None
        assert r.status_code == 200, r.text
        return dict(r.json())

    def model(self, name: str, task_id: str) -> bytes:
        r = self.client.get(f"{API}/tasks/{task_id}/model", headers=self.sh(name))
        assert r.status_code == 200, r.text
        assert r.headers[HEADER_SHA256] == sha256(r.content)
        return bytes(r.content)

    def train_and_upload(
        self,
        name: str,
        task: dict[str, Any],
        num_samples: int = 10,
        metrics: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        body = update_bundle(
            self.model(name, task["task_id"]),
            site=name,
            round_number=task["round"],
            num_samples=num_samples,
            spec_hash=task["spec_hash"],
            **kwargs,
        )
        return self.upload(name, task["task_id"], body, num_samples, metrics=metrics)

    def upload(
        self, name: str, task_id: str, body: bytes, num_samples: int, **kw: Any
    ) -> httpx.Response:
        headers = upload_headers(self.sites[name][1], body, num_samples, kw.pop("metrics", None))
        headers.update(kw.pop("headers", {}))
        return self.client.put(f"{API}/tasks/{task_id}/update", content=body, headers=headers)

    def experiment(self, experiment_id: str) -> dict[str, Any]:
        r = self.client.get(f"{API}/experiments/{experiment_id}", headers=self.rh)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def rounds(self, experiment_id: str) -> list[dict[str, Any]]:
        r = self.client.get(f"{API}/experiments/{experiment_id}/rounds", headers=self.rh)
        assert r.status_code == 200, r.text
        return list(r.json())

    def round_model(self, experiment_id: str, round_number: int) -> bytes:
        r = self.client.get(
            f"{API}/experiments/{experiment_id}/rounds/{round_number}/model", headers=self.rh
        )
        assert r.status_code == 200, r.text
        return bytes(r.content)


_T = TypeVar("_T")
_R = TypeVar("_R")


def all_at_once(
    call: Callable[[_T], _R], items: Sequence[_T], *, timeout_s: float = 60
) -> list[_R]:
    """``call`` on each item, each from a thread of its own, all let go at the same moment (a
    barrier); the results in the order the calls returned.

    Raises:
        BaseException: the first error a call raised (after every thread has ended).
    """
    barrier = threading.Barrier(len(items))
    results: list[_R] = []
    errors: list[BaseException] = []

    def run(item: _T) -> None:
        try:
            barrier.wait(timeout=timeout_s)
            results.append(call(item))
        except BaseException as exc:  # raised below, on the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout_s)
    if errors:
        raise errors[0]
    return results


def unreported(services: Any, task_id: str) -> int:
    """How many tasks of the task's round have not reported (its ``RoundProgress`` row)."""
    from aggregator.storage.db.models import RoundProgress, Task

    with services.database.session() as session:
        task = session.get(Task, task_id)
        assert task is not None
        progress = session.get(RoundProgress, task.round_id)
        assert progress is not None
        return progress.unreported
