"""Uploads: accepted once, duplicates, and every kind of bad input refused with no change of state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save as st_save
from sqlalchemy import func, select

from aggregator.api.deps import Services
from aggregator.storage.db import Event, Task
from data_specs.constants import HEADER_METRICS, HEADER_NUM_SAMPLES, HEADER_SHA256
from data_specs.weights.bundle import BundleMeta, decode_bundle, encode_bundle
from tests.aggregator.helpers import API, Federation, sha256, update_bundle


def snapshot(services: Services) -> tuple[Any, ...]:
    """Everything an upload could change: task rows, the audit log, the blob store.

    The batched bookkeeping (a task's first delivery, written about 0.1 s after the poll) is
    flushed first, so that a snapshot never races it.
    """
    services.bookkeeping.flush()
    with services.database.session() as session:
        tasks = sorted(
            (t.id, t.status, t.update_sha256, t.bytes_up, t.num_samples)
            for t in session.scalars(select(Task))
        )
        events = session.scalar(select(func.count(Event.id)))
    blobs = sorted(str(p) for p in services.blobs.root.rglob("*") if p.is_file())
    return tasks, events, blobs


@pytest.fixture
def running(fed: Federation, services: Services) -> dict[str, Any]:
    exp = fed.create_experiment(rounds=2)
    fed.start(exp)
    services.orchestrator.step()
    task = fed.next_task("site-a")
    assert task is not None
    model = fed.model("site-a", task["task_id"])
    body = update_bundle(
        model, site="site-a", round_number=1, num_samples=12, spec_hash=task["spec_hash"]
    )
    services.bookkeeping.flush()  # the delivery note written now, not during a snapshot
    return {"exp": exp, "task": task, "model": model, "body": body}


def _with_tensors(
    running: dict[str, Any], change: Callable[[dict[str, np.ndarray]], None], **meta: Any
) -> bytes:
    tensors = dict(decode_bundle(running["body"]).tensors)
    change(tensors)
    fields = {"spec_hash": running["task"]["spec_hash"], "round": 1, "num_samples": 12, **meta}
    from safetensors.numpy import save

    return save(
        {k: np.ascontiguousarray(v) if v.ndim else v for k, v in tensors.items()},
        BundleMeta(**fields).to_header(),
    )


def test_accepted_once_then_duplicate(
    fed: Federation, running: dict[str, Any], services: Services
) -> None:
    task_id = running["task"]["task_id"]
    first = fed.upload("site-a", task_id, running["body"], 12)
    assert first.status_code == 200
    assert first.json() == {
        "task_id": task_id,
        "sha256": sha256(running["body"]),
        "accepted": True,
        "duplicate": False,
        "reason": None,
    }
    before = snapshot(services)
    second = fed.upload("site-a", task_id, running["body"], 12)
    assert (
        second.status_code == 200
        and second.json()["duplicate"] is True
        and second.json()["accepted"] is True
    )
    assert snapshot(services) == before
    other = update_bundle(
        running["model"],
        site="site-x",
        round_number=1,
        num_samples=12,
        spec_hash=running["task"]["spec_hash"],
    )
    r = fed.upload("site-a", task_id, other, 12)
    assert r.status_code == 409 and "accepted" in r.json()["detail"]
    metrics = fed.client.get("/metrics").text
    assert 'fedseg_updates_total{outcome="accepted"} 1.0' in metrics
    assert 'fedseg_updates_total{outcome="duplicate"} 1.0' in metrics


def _bad_cases(running: dict[str, Any]) -> dict[str, tuple[int, bytes, dict[str, str], str]]:
    body = running["body"]
    nan = _with_tensors(
        running,
        lambda t: t.__setitem__("model.0.conv.unit0.conv.bias", np.full(4, np.nan, np.float32)),
    )
    shapes = _with_tensors(
        running, lambda t: t.__setitem__("model.0.conv.unit0.conv.bias", np.zeros(5, np.float32))
    )
    missing = _with_tensors(running, lambda t: t.pop("model.0.residual.bias"))
    wrong_round = _with_tensors(running, lambda t: None, round=2)
    wrong_spec = _with_tensors(running, lambda t: None, spec_hash="0" * 16)
    zero_samples = _with_tensors(running, lambda t: None, num_samples=0)
    truncated = body[: len(body) // 2]
    not_bundle = st_save({"a": np.zeros(3, np.float32)})
    return {
        # name: (status, body, extra headers, words in the detail)
        "nan": (400, nan, {}, "non-finite"),
        "wrong shapes": (400, shapes, {}, "expected shape"),
        "missing key": (400, missing, {}, "missing keys"),
        "wrong round": (400, wrong_round, {}, "round"),
        "wrong spec": (400, wrong_spec, {}, "task spec"),
        "zero samples in bundle": (
            400,
            zero_samples,
            {HEADER_NUM_SAMPLES: "0"},
            HEADER_NUM_SAMPLES,
        ),
        "samples disagree": (400, body, {HEADER_NUM_SAMPLES: "13"}, "X-Num-Samples is 13"),
        "samples not a number": (400, body, {HEADER_NUM_SAMPLES: "ten"}, HEADER_NUM_SAMPLES),
        "truncated bundle": (400, truncated, {}, "truncated"),
        "not a fedseg bundle": (400, not_bundle, {}, "not a fedseg weights bundle"),
        "wrong sha256": (400, body, {HEADER_SHA256: "ab" * 32}, "sha256"),
        "malformed sha256": (400, body, {HEADER_SHA256: "xyz"}, HEADER_SHA256),
        "body shorter than content-length": (
            400,
            body,
            {"Content-Length": str(len(body) + 10)},
            "truncated",
        ),
        "oversize": (413, body, {"Content-Length": str(10 * 1024 * 1024)}, "exceeds the limit"),
        "metrics not json": (422, body, {HEADER_METRICS: "{not json"}, HEADER_METRICS),
        "metrics with extra fields": (
            422,
            body,
            {HEADER_METRICS: '{"patient": "p001"}'},
            HEADER_METRICS,
        ),
    }


CASES = [
    "nan",
    "wrong shapes",
    "missing key",
    "wrong round",
    "wrong spec",
    "zero samples in bundle",
    "samples disagree",
    "samples not a number",
    "truncated bundle",
    "not a fedseg bundle",
    "wrong sha256",
    "malformed sha256",
    "body shorter than content-length",
    "oversize",
    "metrics not json",
    "metrics with extra fields",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_upload_is_refused_without_state_change(
    case: str, fed: Federation, running: dict[str, Any], services: Services
) -> None:
    status, body, extra, words = _bad_cases(running)[case]
    task_id = running["task"]["task_id"]
    fix_sha = HEADER_SHA256 not in extra
    headers = {HEADER_SHA256: sha256(body)} if fix_sha else {}
    headers.update(extra)
    before = snapshot(services)
    r = fed.upload("site-a", task_id, body, 12, headers=headers)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert snapshot(services) == before
    # The task is still open: the proper update goes through afterwards.
    assert fed.upload("site-a", task_id, running["body"], 12).json()["accepted"] is True


def test_refusals_are_counted_by_reason(fed: Federation, running: dict[str, Any]) -> None:
    cases = _bad_cases(running)
    for case in ("nan", "wrong sha256", "oversize"):
        _, body, extra, _ = cases[case]
        headers = {HEADER_SHA256: sha256(body), **extra}
        fed.upload("site-a", running["task"]["task_id"], body, 12, headers=headers)
    text = fed.client.get("/metrics").text
    for reason in ("non_finite", "sha256_mismatch", "too_large"):
        assert f'fedseg_update_rejects_total{{reason="{reason}"}} 1.0' in text


def test_missing_content_length_is_411(fed: Federation, running: dict[str, Any]) -> None:
    body = running["body"]

    def chunks() -> Any:
        yield body

    headers = {
        "Authorization": fed.sh("site-a")["Authorization"],
        HEADER_SHA256: sha256(body),
        HEADER_NUM_SAMPLES: "12",
    }
    r = fed.client.put(
        f"{API}/tasks/{running['task']['task_id']}/update", content=chunks(), headers=headers
    )
    assert r.status_code == 411


def test_site_cannot_act_for_another_site(
    fed: Federation, running: dict[str, Any], services: Services
) -> None:
    task_id = running["task"]["task_id"]
    before = snapshot(services)
    r = fed.upload("site-b", task_id, running["body"], 12)
    assert r.status_code == 404 and "not found" in r.json()["detail"]
    assert (
        fed.client.get(f"{API}/tasks/{task_id}/model", headers=fed.sh("site-b")).status_code == 404
    )
    r = fed.client.post(
        f"{API}/tasks/{task_id}/failure", json={"reason": "x"}, headers=fed.sh("site-b")
    )
    assert r.status_code == 404
    assert snapshot(services) == before


def test_unknown_task_and_experiment_are_404(fed: Federation) -> None:
    assert fed.upload("site-a", "nope", b"x" * 10, 1).status_code == 404
    assert fed.client.get(f"{API}/tasks/nope/model", headers=fed.sh("site-a")).status_code == 404
    for path in ("", "/rounds", "/rounds/0/model"):
        assert fed.client.get(f"{API}/experiments/nope{path}", headers=fed.rh).status_code == 404
    assert fed.client.post(f"{API}/experiments/nope/start", headers=fed.rh).status_code == 404


def test_late_upload_is_409(
    fed: Federation, running: dict[str, Any], services: Services, clock: Any
) -> None:
    for name in ("site-b", "site-c"):
        task = fed.next_task(name)
        assert task is not None and fed.train_and_upload(name, task).status_code == 200
    clock.advance(601)  # deadline: site-a never sent its update
    services.orchestrator.step()
    before = snapshot(services)
    r = fed.upload("site-a", running["task"]["task_id"], running["body"], 12)
    assert r.status_code == 409 and "closed" in r.json()["detail"]
    assert snapshot(services) == before
    assert 'fedseg_update_rejects_total{reason="late"} 1.0' in fed.client.get("/metrics").text


def test_norm_bound_rejects_and_records_reason(fed: Federation, services: Services) -> None:
    exp = fed.create_experiment(rounds=1, update_norm_bound=0.05)
    fed.start(exp)
    services.orchestrator.step()
    task = fed.next_task("site-a")
    assert task is not None
    r = fed.train_and_upload("site-a", task, scale=1.0)
    assert r.status_code == 200
    assert r.json()["accepted"] is False and "update_norm_bound" in r.json()["reason"]
    row = fed.rounds(exp)[0]["sites"]
    rejected = next(s for s in row if s["site_name"] == "site-a")
    assert (
        rejected["status"] == "rejected"
        and "exceeds update_norm_bound 0.05" in rejected["reject_reason"]
    )
    small = fed.train_and_upload("site-a", task, scale=1e-5)
    assert small.status_code == 409  # a rejected update still counts as the site's report
    assert 'fedseg_update_rejects_total{reason="norm_bound"} 1.0' in fed.client.get("/metrics").text


def test_codec_updates_are_rejected_with_reason_when_not_allowed(
    fed: Federation, services: Services
) -> None:
    exp = fed.create_experiment(rounds=1)
    fed.start(exp)
    services.orchestrator.step()
    task = fed.next_task("site-a")
    assert task is not None
    theta = decode_bundle(fed.model("site-a", task["task_id"])).tensors
    meta = BundleMeta(
        spec_hash=task["spec_hash"],
        round=1,
        num_samples=5,
        codec="quantize",
        codec_params={"bits": 8},
    )
    body = encode_bundle(theta, meta)
    r = fed.upload("site-a", task["task_id"], body, 5)
    assert r.status_code == 200 and r.json()["accepted"] is False
    assert "codec 'quantize' is not allowed" in r.json()["reason"]


def test_failure_report(fed: Federation, running: dict[str, Any], services: Services) -> None:
    task_id = running["task"]["task_id"]
    r = fed.client.post(
        f"{API}/tasks/{task_id}/failure",
        json={"reason": "GPU out of memory"},
        headers=fed.sh("site-a"),
    )
    assert r.status_code == 200 and r.json() == {"task_id": task_id, "status": "failed"}
    again = fed.client.post(
        f"{API}/tasks/{task_id}/failure", json={"reason": "again"}, headers=fed.sh("site-a")
    )
    assert again.status_code == 200
    assert fed.upload("site-a", task_id, running["body"], 12).status_code == 409
    bad = fed.client.post(
        f"{API}/tasks/{task_id}/failure", json={"reason": ""}, headers=fed.sh("site-a")
    )
    assert bad.status_code == 422
    site = next(s for s in fed.rounds(running["exp"])[0]["sites"] if s["site_name"] == "site-a")
    assert site["failure_reason"] == "GPU out of memory"


def test_allowed_codec_is_decoded_and_aggregated(fed: Federation, services: Services) -> None:
    from data_specs.constants import BundleKind
    from data_specs.update_codecs import encode_update
    from data_specs.wire import CodecConfig

    codec = {"name": "quantize", "params": {"bits": 8}, "min_size": 16}
    exp = fed.create_experiment(
        rounds=1, min_sites=3, train={"codec": codec, "update_kind": "diff"}
    )
    fed.start(exp)
    services.orchestrator.step()
    dense = {}
    for name in fed.sites:
        task = fed.next_task(name)
        assert task is not None
        theta = decode_bundle(fed.model(name, task["task_id"])).tensors
        weights = update_bundle(
            fed.model(name, task["task_id"]),
            site=name,
            round_number=1,
            num_samples=5,
            spec_hash=task["spec_hash"],
        )
        diff = {k: np.asarray(v - theta[k]) for k, v in decode_bundle(weights).tensors.items()}
        dense[name] = diff
        payload, params = encode_update(diff, CodecConfig(**codec), seed=task["train"]["seed"])
        meta = BundleMeta(
            spec_hash=task["spec_hash"],
            round=1,
            kind=BundleKind.DIFF,
            num_samples=5,
            codec="quantize",
            codec_params=params,
        )
        body = encode_bundle(payload, meta)
        if name == "site-a":  # encoded with another seed: refused, nothing recorded
            wrong, wrong_params = encode_update(
                diff, CodecConfig(**codec), seed=task["train"]["seed"] + 1
            )
            bad = encode_bundle(
                wrong, BundleMeta(**{**meta.__dict__, "codec_params": wrong_params})
            )
            r = fed.upload(name, task["task_id"], bad, 5)
            assert r.status_code == 400 and "seed" in r.json()["detail"]
        r = fed.upload(name, task["task_id"], body, 5)
        assert r.status_code == 200 and r.json()["accepted"] is True, r.text
    services.orchestrator.step()
    assert fed.experiment(exp)["status"] == "completed"
    before = decode_bundle(fed.round_model(exp, 0)).tensors
    after = decode_bundle(fed.round_model(exp, 1)).tensors
    key = "model.0.conv.unit0.conv.weight"
    want = before[key] + np.mean([d[key] for d in dense.values()], axis=0)
    np.testing.assert_allclose(after[key], want, atol=2e-3)  # 8-bit quantisation error
    assert 'fedseg_update_rejects_total{reason="codec"} 1.0' in fed.client.get("/metrics").text
