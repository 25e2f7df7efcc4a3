"""Regression cases of the outside probe: each input that once answered 500 now gets a 4xx."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from fastapi.testclient import TestClient

from aggregator.api.deps import Services
from data_specs.weights.bundle import decode_bundle
from tests.aggregator.helpers import (
    ADMIN_TOKEN,
    API,
    TINY_SPEC,
    Federation,
    bearer,
    sha256,
    update_bundle,
)
from tests.aggregator.test_uploads import snapshot


@pytest.fixture
def running(fed: Federation, services: Services) -> dict[str, Any]:
    """A started experiment, site-a's round-1 task and a good update for it."""
    exp = fed.create_experiment(rounds=2)
    fed.start(exp)
    services.orchestrator.step()
    task = fed.next_task("site-a")
    assert task is not None
    model = fed.model("site-a", task["task_id"])
    body = update_bundle(
        model, site="site-a", round_number=1, num_samples=12, spec_hash=task["spec_hash"]
    )
    return {"exp": exp, "task": task, "model": model, "body": body}


def _safetensors(header: Any, data: bytes = b"") -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _entry(**over: Any) -> dict[str, Any]:
    return {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], **over}


def _meta(task: dict[str, Any]) -> dict[str, str]:
    return {
        "fedseg_format": "1",
        "spec_hash": task["spec_hash"],
        "round": "1",
        "kind": "full",
        "num_samples": "12",
    }


def _bodies(task: dict[str, Any]) -> dict[str, bytes]:
    meta = _meta(task)
    return {
        "metadata as a list": _safetensors({"__metadata__": [1, 2], "w": _entry()}, b"\0" * 4),
        "metadata as a string": _safetensors({"__metadata__": "x", "w": _entry()}, b"\0" * 4),
        "dtype as a list": _safetensors(
            {"__metadata__": meta, "w": _entry(dtype=["F32"])}, b"\0" * 4
        ),
        "shape 1e400": _safetensors(
            b'{"w": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 4]}}', b"\0" * 4
        ),
        "shape a huge int": _safetensors(
            {"__metadata__": meta, "w": _entry(shape=[2**70], data_offsets=[0, 4])}, b"\0" * 4
        ),
        "nested 200k levels": _safetensors(b"[" * 200_000 + b"]" * 200_000),
        "NaN in the header": _safetensors(
            b'{"w": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}'
        ),
        "overlapping offsets": _safetensors(
            {"__metadata__": meta, "a": _entry(), "b": _entry()}, b"\0" * 4
        ),
        "codec_params nested deep": _safetensors(
            {"__metadata__": {**meta, "codec_params": "[" * 5000 + "]" * 5000}, "w": _entry()},
            b"\0" * 4,
        ),
        "round 10^30 in metadata": _safetensors(
            {"__metadata__": {**meta, "round": str(10**30)}, "w": _entry()}, b"\0" * 4
        ),
    }


CASES = list(_bodies({"spec_hash": "0" * 16}))


@pytest.mark.parametrize("case", CASES)
def test_malformed_headers_are_refused_with_4xx(
    case: str,
    fed: Federation,
    running: dict[str, Any],
    services: Services,
) -> None:
    body = _bodies(running["task"])[case]
    before = snapshot(services)
    r = fed.upload("site-a", running["task"]["task_id"], body, 12)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.json()["detail"]
    assert snapshot(services) == before  # nothing stored, no orphan blob


def test_oversized_header_is_refused_before_the_body_is_read(
    fed: Federation,
    running: dict[str, Any],
    services: Services,
) -> None:
    # A header length of 95 MB is refused from the first 8 bytes: 413, nothing staged.
    body = struct.pack("<Q", 95_000_000) + b"{" + b" " * 4096
    r = fed.upload("site-a", running["task"]["task_id"], body, 12)
    assert r.status_code == 413 and "header" in r.json()["detail"], r.text


@pytest.mark.parametrize("value", ["100000000000000000000", "1e20", "-3", "0", "2.5", " 7 7"])
def test_num_samples_header_is_bounded(
    value: str,
    fed: Federation,
    running: dict[str, Any],
    services: Services,
) -> None:
    before = snapshot(services)
    r = fed.upload(
        "site-a", running["task"]["task_id"], running["body"], 12, headers={"X-Num-Samples": value}
    )
    assert r.status_code == 400 and "X-Num-Samples" in r.json()["detail"], r.text
    assert snapshot(services) == before


def test_metrics_with_nan_are_refused(fed: Federation, running: dict[str, Any]) -> None:
    r = fed.upload(
        "site-a",
        running["task"]["task_id"],
        running["body"],
        12,
        headers={"X-Metrics": '{"val_dice": NaN}'},
    )
    assert r.status_code == 422 and "NaN" in r.json()["detail"], r.text


def test_initial_model_with_string_metadata_is_refused(fed: Federation) -> None:
    exp = fed.create_experiment()
    body = _safetensors({"__metadata__": "x", "w": _entry()}, b"\0" * 4)
    r = fed.client.put(
        f"{API}/experiments/{exp}/initial-model",
        content=body,
        headers={**fed.rh, "X-Content-SHA256": sha256(body)},
    )
    assert r.status_code == 400, r.text


@pytest.mark.parametrize(
    "path",
    [
        "/experiments/{exp}/rounds/1000000000000000000000000000000/model",
        "/experiments/{exp}/rounds/-1/model",
        "/events?after=9223372036854775808",
        "/events?after=-1",
    ],
)
def test_path_and_query_ints_are_bounded(path: str, fed: Federation) -> None:
    exp = fed.create_experiment()
    r = fed.client.get(API + path.format(exp=exp), headers=fed.rh)
    assert r.status_code == 422, r.text


def test_nan_in_json_is_refused_and_the_answer_is_json(fed: Federation) -> None:
    body = json.dumps({"name": "x", "spec": TINY_SPEC.model_dump(mode="json"), "rounds": 1})
    raw = body[:-1] + ', "fraction": NaN}'
    r = fed.client.post(
        f"{API}/experiments", content=raw, headers={**fed.rh, "Content-Type": "application/json"}
    )
    assert r.status_code == 422
    assert "NaN" in r.json()["detail"]

    def no_constants(token: str) -> None:
        raise AssertionError(f"the answer carries a bare {token}")

    json.loads(r.text, parse_constant=no_constants)  # the answer is standard JSON


def test_deeply_nested_json_body_is_refused(fed: Federation) -> None:
    raw = "[" * 100_000 + "]" * 100_000
    r = fed.client.post(
        f"{API}/experiments", content=raw, headers={**fed.rh, "Content-Type": "application/json"}
    )
    assert r.status_code == 422, r.text


def test_oversized_json_body_is_413(client: TestClient) -> None:
    raw = json.dumps({"name": "x" * (2 << 20)})
    r = client.post(
        f"{API}/researchers",
        content=raw,
        headers={**bearer(ADMIN_TOKEN), "Content-Type": "application/json"},
    )
    assert r.status_code == 413, r.text


def test_validation_errors_do_not_echo_the_input(fed: Federation) -> None:
    r = fed.client.post(f"{API}/experiments", json={"name": "secret-value-123"}, headers=fed.rh)
    assert r.status_code == 422
    assert isinstance(r.json()["detail"], str) and "secret-value-123" not in r.text


def test_a_good_update_still_goes_through(fed: Federation, running: dict[str, Any]) -> None:
    assert decode_bundle(running["body"]).meta.round == 1
    r = fed.upload("site-a", running["task"]["task_id"], running["body"], 12)
    assert r.status_code == 200 and r.json()["accepted"] is True, r.text


def _deep_spec(levels: int) -> dict[str, Any]:
    return {
        **TINY_SPEC.model_dump(mode="json"),
        "channels": [4] * levels,
        "strides": [2] * (levels - 1),
        "patch_size": [2**20, 2**20],
    }


BAD_EXPERIMENTS = {
    "strides [-2]": ({"spec": {"strides": [-2]}}, "strides"),
    "strides [0]": ({"spec": {"strides": [0]}}, "strides"),
    "channels [0, 8]": ({"spec": {"channels": [0, 8]}}, "channels"),
    "channels [-4, 8]": ({"spec": {"channels": [-4, 8]}}, "channels"),
    "patch [0, 0]": ({"spec": {"patch_size": [0, 0]}}, "patch_size"),
    "200-level network": ({"spec": _deep_spec(200)}, "channels"),
    "max_steps 1e18": ({"train": {"max_steps": 10**18}}, "max_steps"),
    "codec zip": ({"train": {"codec": {"name": "zip"}}}, "codec"),
}


@pytest.mark.parametrize("case", sorted(BAD_EXPERIMENTS))
def test_bad_experiments_are_refused_at_creation(case: str, fed: Federation) -> None:
    over, words = BAD_EXPERIMENTS[case]
    spec = {**TINY_SPEC.model_dump(mode="json"), **over.get("spec", {})}
    body = {
        "name": "bad",
        "spec": spec,
        "rounds": 1,
        **{k: v for k, v in over.items() if k != "spec"},
    }
    r = fed.client.post(f"{API}/experiments", json=body, headers=fed.rh)
    assert r.status_code == 422, (case, r.status_code, r.text[:300])
    assert words in r.json()["detail"], r.text[:300]
    assert fed.client.get(f"{API}/experiments", headers=fed.rh).json() == []  # nothing created
