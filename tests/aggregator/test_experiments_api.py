"""Experiments: validation, initial model, lifecycle, audit events, personal models and routing bundles."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open

from aggregator.api.deps import Services
from aggregator.storage.global_models import build_initial_weights
from data_specs.constants import HEADER_SHA256
from data_specs.task_spec import expected_tensors
from data_specs.weights.bundle import BundleMeta, decode_bundle, encode_bundle
from tests.aggregator.helpers import API, TINY_SPEC, Federation, bearer, sha256, upload_headers


def _spec() -> dict[str, Any]:
    return TINY_SPEC.model_dump(mode="json")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"name": "x", "spec": _spec(), "rounds": 0}, "rounds"),
        ({"name": "x", "spec": _spec(), "rounds": 1, "fraction": 1.5}, "fraction"),
        (
            {"name": "x", "spec": _spec(), "rounds": 1, "strategy": {"name": "fedmagic"}},
            "strategy: Input tag 'fedmagic'",
        ),
        (
            {
                "name": "x",
                "spec": _spec(),
                "rounds": 1,
                "strategy": {"name": "fedavg", "params": {"lr": 1}},
            },
            "no parameter",
        ),
        ({"name": "x", "spec": {**_spec(), "strides": [2, 2]}, "rounds": 1}, "strides"),
        ({"name": "x", "spec": _spec(), "rounds": 1, "sites": ["a"], "min_sites": 2}, "min_sites"),
        ({"name": "x", "spec": _spec(), "rounds": 1, "surprise": True}, "surprise"),
    ],
)
def test_create_refuses_bad_configs(fed: Federation, body: dict[str, Any], words: str) -> None:
    r = fed.client.post(f"{API}/experiments", json=body, headers=fed.rh)
    assert r.status_code == 422
    assert words in json.dumps(r.json()["detail"])


def test_malformed_json_is_422(fed: Federation) -> None:
    headers = {**fed.rh, "Content-Type": "application/json"}
    r = fed.client.post(f"{API}/experiments", content=b'{"name": "x", "spec": ', headers=headers)
    assert r.status_code == 422 and "detail" in r.json()
    r = fed.client.post(f"{API}/sites", content=b"[1, 2", headers=headers)
    assert r.status_code == 422


def test_unknown_site_ids_are_422_and_nothing_is_created(fed: Federation) -> None:
    r = fed.client.post(
        f"{API}/experiments",
        json={"name": "x", "spec": _spec(), "rounds": 1, "sites": ["ghost"], "min_sites": 1},
        headers=fed.rh,
    )
    assert r.status_code == 422 and "ghost" in r.json()["detail"]
    assert fed.client.get(f"{API}/experiments", headers=fed.rh).json() == []


def test_start_builds_the_initial_model_from_spec_and_seed(fed: Federation) -> None:
    exp = fed.create_experiment(seed=11)
    info = fed.start(exp)
    assert info["status"] == "running" and sorted(info["participants"]) == sorted(
        s for s, _ in fed.sites.values()
    )
    got = decode_bundle(
        fed.round_model(exp, 0),
        expected=expected_tensors(TINY_SPEC),
        spec_hash=TINY_SPEC.spec_hash(),
    )
    want = build_initial_weights(TINY_SPEC, 11)
    assert got.meta.round == 0
    for key, value in want.items():
        np.testing.assert_array_equal(got.tensors[key], value)
    again = fed.client.post(f"{API}/experiments/{exp}/start", headers=fed.rh)
    assert again.status_code == 409 and "running" in again.json()["detail"]


def test_uploaded_initial_model_is_used(fed: Federation) -> None:
    exp = fed.create_experiment()
    weights = {
        k: np.full(shape, 0.25, dtype) for k, (shape, dtype) in expected_tensors(TINY_SPEC).items()
    }
    body = encode_bundle(weights, BundleMeta(spec_hash=TINY_SPEC.spec_hash(), round=0))
    headers = {**fed.rh, HEADER_SHA256: sha256(body)}
    r = fed.client.put(f"{API}/experiments/{exp}/initial-model", content=body, headers=headers)
    assert r.status_code == 200, r.text
    fed.start(exp)
    got = decode_bundle(fed.round_model(exp, 0)).tensors
    assert all(np.all(v == np.asarray(0.25, v.dtype)) for v in got.values())
    late = fed.client.put(f"{API}/experiments/{exp}/initial-model", content=body, headers=headers)
    assert late.status_code == 409


def test_bad_initial_model_is_refused(fed: Federation) -> None:
    exp = fed.create_experiment()
    weights = {
        k: np.zeros(shape, dtype) for k, (shape, dtype) in expected_tensors(TINY_SPEC).items()
    }
    weights["model.0.conv.unit0.conv.weight"] = np.zeros((1, 1, 3, 3), np.float32)
    body = encode_bundle(weights, BundleMeta(spec_hash=TINY_SPEC.spec_hash(), round=0))
    r = fed.client.put(
        f"{API}/experiments/{exp}/initial-model",
        content=body,
        headers={**fed.rh, HEADER_SHA256: sha256(body)},
    )
    assert r.status_code == 400 and "expected shape" in r.json()["detail"]
    assert fed.experiment(exp)["initial_model_sha256"] is None


def test_pause_resume_abort(fed: Federation, services: Services) -> None:
    exp = fed.create_experiment(rounds=3)
    fed.start(exp)
    services.orchestrator.step()
    assert (
        fed.client.post(f"{API}/experiments/{exp}/pause", headers=fed.rh).json()["status"]
        == "paused"
    )
    assert fed.next_task("site-a") is None  # paused: nothing handed out
    assert fed.client.post(f"{API}/experiments/{exp}/pause", headers=fed.rh).status_code == 409
    assert fed.start(exp)["status"] == "running"
    task = fed.next_task("site-a")
    assert task is not None
    aborted = fed.client.post(f"{API}/experiments/{exp}/abort", headers=fed.rh)
    assert aborted.json()["status"] == "aborted"
    assert fed.train_and_upload("site-a", task).status_code == 409
    assert fed.next_task("site-a") is None
    assert fed.client.post(f"{API}/experiments/{exp}/start", headers=fed.rh).status_code == 409
    kinds = [
        e["kind"]
        for e in fed.client.get(
            f"{API}/events", params={"experiment_id": exp}, headers=fed.rh
        ).json()
    ]
    assert kinds[:5] == [
        "experiment.created",
        "experiment.started",
        "round.opened",
        "experiment.paused",
        "experiment.resumed",
    ]
    assert kinds[-1] == "experiment.aborted"


def test_events_are_paged_and_scoped(fed: Federation, client: Any) -> None:
    fed.create_experiment()
    events = fed.client.get(f"{API}/events", headers=fed.rh).json()
    assert [e["kind"] for e in events][:2] == ["researcher.created", "site.registered"]
    later = fed.client.get(
        f"{API}/events", params={"after": events[-2]["id"]}, headers=fed.rh
    ).json()
    assert [e["id"] for e in later] == [events[-1]["id"]]
    other = client.post(
        f"{API}/researchers",
        json={"name": "eve"},
        headers=bearer("admin-token-for-tests-0123456789"),
    )
    theirs = client.get(f"{API}/events", headers=bearer(other.json()["token"])).json()
    assert "experiment.created" not in [e["kind"] for e in theirs]


def test_float16_downlink_is_served_and_cached(fed: Federation, services: Services) -> None:
    exp = fed.create_experiment(rounds=1, train={"codec": {"downlink_float16": True}})
    fed.start(exp)
    services.orchestrator.step()
    task = fed.next_task("site-a")
    assert task is not None
    body = fed.model("site-a", task["task_id"])
    assert task["model_sha256"] == sha256(body) and services.blobs.exists(sha256(body))
    half = decode_bundle(body)
    assert half.meta.wire_dtype == "float16"
    assert half.tensors["model.0.conv.unit0.conv.weight"].dtype == np.float16
    full = decode_bundle(body, expected=expected_tensors(TINY_SPEC))  # what a site does: cast back
    f32 = decode_bundle(fed.round_model(exp, 0)).tensors
    np.testing.assert_allclose(
        full.tensors["model.0.conv.unit0.conv.weight"],
        f32["model.0.conv.unit0.conv.weight"],
        atol=1e-3,
    )
    assert len(body) < 0.8 * len(
        fed.round_model(exp, 0)
    )  # tiny model: the JSON header weighs a lot
    assert fed.train_and_upload("site-a", task).json()["accepted"] is True


def test_fedbn_keeps_norm_layers_local(fed: Federation, services: Services) -> None:
    exp = fed.create_experiment(rounds=1, train={"personalization": {"method": "fedbn"}})
    info = fed.experiment(exp)
    assert info["local_keys"] and all(".adn.N." in k for k in info["local_keys"])
    fed.start(exp)
    services.orchestrator.step()
    task = fed.next_task("site-a")
    assert task is not None and task["local_keys"] == info["local_keys"]
    for name in fed.sites:
        t = fed.next_task(name)
        assert t is not None and fed.train_and_upload(name, t).status_code == 200
    services.orchestrator.step()
    before = decode_bundle(fed.round_model(exp, 0)).tensors
    after = decode_bundle(fed.round_model(exp, 1)).tensors
    for key in info["local_keys"]:
        np.testing.assert_array_equal(after[key], before[key])
    assert not np.array_equal(
        after["model.0.conv.unit0.conv.weight"], before["model.0.conv.unit0.conv.weight"]
    )


def test_personal_models_grants_and_routing_bundle(
    fed: Federation, services: Services, client: Any
) -> None:
    exp = fed.create_experiment(rounds=1)
    fed.start(exp)
    services.orchestrator.step()
    personal = {}
    for name in ("site-b", "site-a"):
        task = fed.next_task(name)
        assert task is not None
        theta = decode_bundle(fed.model(name, task["task_id"])).tensors
        weights = {
            k: np.asarray(v + (1 if name == "site-a" else 2), v.dtype) for k, v in theta.items()
        }
        body = encode_bundle(weights, BundleMeta(spec_hash=task["spec_hash"], round=1))
        r = client.put(
            f"{API}/tasks/{task['task_id']}/personal",
            content=body,
            headers=upload_headers(fed.sites[name][1], body, 1),
        )
        assert (
            r.status_code == 200 and r.json()["accepted"] is True and r.json()["duplicate"] is False
        )
        again = client.put(
            f"{API}/tasks/{task['task_id']}/personal",
            content=body,
            headers=upload_headers(fed.sites[name][1], body, 1),
        )
        assert again.json()["duplicate"] is True
        personal[name] = weights
    outsider = fed.add_site("outside-hospital")
    r = client.get(f"{API}/experiments/{exp}/routing-bundle", headers=fed.sh("outside-hospital"))
    assert r.status_code == 403
    grant = client.post(
        f"{API}/experiments/{exp}/grants", json={"site_id": outsider}, headers=fed.rh
    )
    assert grant.status_code == 201 and grant.json()["site_name"] == "outside-hospital"
    assert (
        client.post(
            f"{API}/experiments/{exp}/grants", json={"site_id": "ghost"}, headers=fed.rh
        ).status_code
        == 422
    )
    r = client.get(f"{API}/experiments/{exp}/routing-bundle", headers=fed.sh("outside-hospital"))
    assert r.status_code == 200 and r.headers[HEADER_SHA256] == sha256(r.content)
    path = services.blobs.path(sha256(r.content))
    with safe_open(str(path), framework="np") as handle:
        meta = handle.metadata()
        experts = json.loads(meta["experts"])
        assert meta["fedseg_routing"] == "1" and meta["spec_hash"] == TINY_SPEC.spec_hash()
        assert json.loads(meta["spec"]) == TINY_SPEC.model_dump(mode="json")
        ids = {n: fed.sites[n][0] for n in ("site-a", "site-b")}
        site_order = sorted(ids, key=ids.get)  # type: ignore[arg-type]
        assert experts == [
            {"index": 0, "source": "global", "name": "global", "round": 0},
            *(
                {"index": i, "source": "site", "name": n, "round": 1}
                for i, n in enumerate(site_order, start=1)
            ),
        ]
        key = "model.0.conv.unit0.conv.weight"
        for i, name in enumerate(site_order, start=1):
            np.testing.assert_array_equal(
                handle.get_tensor(f"expert.{i}.{key}"), personal[name][key]
            )
        names = list(handle.keys())
        assert len([k for k in names if k.startswith("expert.0.")]) == len(
            expected_tensors(TINY_SPEC)
        )
    # A participant may fetch it too; the bundle is reused while inputs are unchanged.
    r2 = client.get(f"{API}/experiments/{exp}/routing-bundle", headers=fed.sh("site-c"))
    assert r2.status_code == 200 and r2.content == r.content
