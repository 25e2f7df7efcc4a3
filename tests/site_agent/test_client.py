"""The aggregator client: backoff on 5xx and network errors, 401/409 handling, integrity, the guard."""

from __future__ import annotations

import hashlib
import json

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from data_specs.constants import HEADER_TASK_BYTES, MEDIA_TASK_AND_MODEL
from data_specs.task_spec import expected_tensors
from data_specs.weights.bundle import BundleMeta, encode_bundle
from data_specs.wire import SiteMetrics, TaskAssignment, TrainConfig
from site_agent.errors import (
    AggregatorError,
    AggregatorUnavailableError,
    IntegrityError,
    OutboundRefusedError,
    RoundClosedError,
    TokenRevokedError,
)
from site_agent.federation.client import AggregatorClient
from site_agent.federation.privacy import FailureReason
from site_agent.federation.retry import Backoff
from site_agent.federation.workdir import WorkDir
from tests.site_agent.conftest import TINY


def make_task(sha: str = "0" * 64) -> TaskAssignment:
    return TaskAssignment(
        task_id="t1",
        experiment_id="e1",
        round=1,
        spec=TINY,
        spec_hash=TINY.spec_hash(),
        model_sha256=sha,
        model_size=10,
        train=TrainConfig(),
    )


def client_for(handler, sleeps: list[float], retries: int = 3) -> AggregatorClient:
    http = httpx.Client(base_url="https://agg.test", transport=httpx.MockTransport(handler))
    backoff = Backoff(initial=0.5, maximum=1.5, retries=retries, sleep=sleeps.append)
    return AggregatorClient(http, backoff=backoff, token=SecretStr("site-token-abc"))


def test_backs_off_on_5xx_then_succeeds() -> None:
    calls, sleeps = [], []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            return httpx.Response(503, json={"detail": "busy"})
        return httpx.Response(204)

    client = client_for(handler, sleeps)
    assert client.next_task(wait_s=1) is None
    assert len(calls) == 3
    assert calls[0].headers["Authorization"] == "Bearer site-token-abc"
    assert calls[0].url.params["wait"] == "1"
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0  # exponential, jittered


def test_unreachable_aggregator_gives_up_with_a_clear_error(caplog) -> None:
    sleeps: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = client_for(handler, sleeps, retries=4)
    with pytest.raises(AggregatorUnavailableError, match="failed 5 times"):
        client.next_task(wait_s=1)
    assert len(sleeps) == 4
    for k, delay in enumerate(sleeps):  # d = min(1.5, 0.5 * 2**k), drawn from [d/2, d]
        step = min(1.5, 0.5 * 2**k)
        assert step / 2 <= delay <= step, (k, delay)
    assert "retry 4 in" in caplog.text
    assert "site-token-abc" not in caplog.text


def test_a_corrupt_download_is_fetched_once_more_without_a_pause(tmp_path, caplog) -> None:
    body = b"the model"
    good = hashlib.sha256(body).hexdigest()
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        sent = b"the modeX" if len(calls) == 1 else body  # damaged in transit once
        return httpx.Response(200, content=sent, headers={"X-Content-SHA256": good})

    sleeps: list[float] = []
    dest = tmp_path / "tasks" / "t1" / "global.safetensors"
    client = client_for(handler, sleeps)
    assert client.download_model(make_task(good), dest, WorkDir(tmp_path)) == good
    assert len(calls) == 2 and sleeps == [] and dest.read_bytes() == body
    assert "downloading once more" in caplog.text


def test_a_download_corrupt_twice_gives_up(tmp_path) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, content=b"bad", headers={"X-Content-SHA256": "0" * 64})

    client = client_for(handler, [])
    dest = tmp_path / "tasks" / "t1" / "global.safetensors"
    with pytest.raises(IntegrityError, match="does not match"):
        client.download_model(make_task("0" * 64), dest, WorkDir(tmp_path))
    assert len(calls) == 2


def test_401_and_409_are_not_retried() -> None:
    sleeps: list[float] = []
    client = client_for(lambda r: httpx.Response(401, json={"detail": "revoked"}), sleeps)
    with pytest.raises(TokenRevokedError, match="revoked or unknown"):
        client.next_task(wait_s=1)
    client = client_for(lambda r: httpx.Response(409, json={"detail": "round closed"}), sleeps)
    with pytest.raises(RoundClosedError):
        client.report_failure("t1", FailureReason.TRAINING_FAILED)
    assert sleeps == []


def test_download_checks_sha256_and_leaves_nothing_on_mismatch(tmp_path) -> None:
    body = b"not the model you announced"
    good = hashlib.sha256(body).hexdigest()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"X-Content-SHA256": good})

    workdir = WorkDir(tmp_path)
    dest = tmp_path / "tasks" / "t1" / "global.safetensors"
    client = client_for(handler, [])
    assert client.download_model(make_task(good), dest, workdir) == good
    assert dest.read_bytes() == body
    dest.unlink()
    with pytest.raises(IntegrityError, match="does not match"):
        client.download_model(make_task("f" * 64), dest, workdir)
    assert list(dest.parent.iterdir()) == []


def bundle(extra: dict[str, np.ndarray] | None = None) -> bytes:
    tensors = {
        k: np.zeros(shape, dtype=dtype) for k, (shape, dtype) in expected_tensors(TINY).items()
    }
    tensors.update(extra or {})
    return encode_bundle(tensors, BundleMeta(spec_hash=TINY.spec_hash(), round=1, num_samples=4))


def test_guard_lets_weights_out_and_refuses_anything_else() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        receipt = {"task_id": "t1", "sha256": "a" * 64, "accepted": True}
        return httpx.Response(200, json=receipt)

    client = client_for(handler, [])
    client.guard.allow_keys(TINY.spec_hash(), expected_tensors(TINY))
    good = bundle()
    metrics = SiteMetrics(val_dice=0.5, num_val_cases=3)
    client.upload_update(
        "t1", good, sha256=hashlib.sha256(good).hexdigest(), num_samples=4, metrics=metrics
    )
    assert len(sent) == 1

    smuggled = bundle({"case_007.nii.gz": np.zeros(3, dtype=np.float32)})
    with pytest.raises(OutboundRefusedError, match="not model weights"):
        client.upload_update("t1", smuggled, sha256="a" * 64, num_samples=4, metrics=metrics)
    with pytest.raises(OutboundRefusedError, match="outside its tensors"):
        client.upload_update(
            "t1", good + b"patient-42", sha256="a" * 64, num_samples=4, metrics=metrics
        )
    with pytest.raises(OutboundRefusedError, match="not a weights bundle"):
        client.share_personal("t1", b'{"image": [1, 2, 3]}', sha256="a" * 64)
    with pytest.raises(OutboundRefusedError, match="fixed text"):
        client.http.post(
            "/api/v1/tasks/t1/failure", content=json.dumps({"reason": "case_007 broke"})
        )
    with pytest.raises(OutboundRefusedError, match="outside the site contract"):
        client.http.post("/api/v1/experiments", json={"name": "x"})
    assert len(sent) == 1  # nothing refused reached the transport


def test_a_download_cut_mid_body_is_retried_and_leaves_no_partial_file(tmp_path) -> None:
    body = b"x" * 5000
    good = hashlib.sha256(body).hexdigest()
    calls: list[int] = []

    class Cut(httpx.SyncByteStream):
        def __iter__(self):
            yield body[:100]
            raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        stream = Cut() if len(calls) == 1 else httpx.ByteStream(body)
        return httpx.Response(200, stream=stream, headers={"X-Content-SHA256": good})

    sleeps: list[float] = []
    dest = tmp_path / "tasks" / "t1" / "global.safetensors"
    assert (
        client_for(handler, sleeps).download_model(make_task(good), dest, WorkDir(tmp_path)) == good
    )
    assert dest.read_bytes() == body and len(calls) == 2 and len(sleeps) == 1
    assert [p.name for p in dest.parent.iterdir()] == ["global.safetensors"]


def test_consent_calls_pass_the_guard_and_carry_only_the_policy() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.path.endswith("/invitations"):
            return httpx.Response(200, json=[{"experiment_id": "e1", "decision": "pending"}])
        if request.url.path.endswith("/approve"):
            return httpx.Response(200, json={"experiment_id": "e1", "decision": "approved"})
        return httpx.Response(200, json=json.loads(request.content))

    client = client_for(handler, [])
    client.set_consent_policy(["researcher:alice"])
    assert client.invitations()[0]["experiment_id"] == "e1"
    assert client.decide("e1", approve=True)["decision"] == "approved"
    assert [(r.method, r.url.path) for r in sent] == [
        ("PUT", "/api/v1/sites/me/consent-policy"),
        ("GET", "/api/v1/invitations"),
        ("POST", "/api/v1/invitations/e1/approve"),
    ]
    assert json.loads(sent[0].content) == {"accept": ["researcher:alice"]}
    with pytest.raises(OutboundRefusedError, match="ConsentPolicy"):
        client.http.put(
            "/api/v1/sites/me/consent-policy", json={"accept": ["*"], "notes": "case_007"}
        )
    with pytest.raises(OutboundRefusedError, match="body"):
        client.http.post("/api/v1/invitations/e1/approve", content=b"patient data")
    assert len(sent) == 3


def _task_and_model(task: TaskAssignment, model: bytes, split: str | None = None) -> httpx.Response:
    text = task.model_dump_json().encode()
    return httpx.Response(
        200,
        content=text + model,
        headers={
            "content-type": MEDIA_TASK_AND_MODEL,
            HEADER_TASK_BYTES: split if split is not None else str(len(text)),
            "X-Content-SHA256": task.model_sha256,
        },
    )


def _serving(task: TaskAssignment, with_task: bytes, model: bytes, calls: list[httpx.Request]):
    """An aggregator sending ``with_task`` with the task, and ``model`` on a download."""

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if request.url.path.endswith("/tasks/next"):
            return _task_and_model(task, with_task)
        return httpx.Response(200, content=model, headers={"X-Content-SHA256": task.model_sha256})

    return handler


def test_a_model_sent_with_its_task_is_written_without_a_download(tmp_path) -> None:
    model = b"the global model"
    task = make_task(hashlib.sha256(model).hexdigest())
    calls: list[httpx.Request] = []
    client = client_for(_serving(task, model, model, calls), [])
    got = client.next_task(wait_s=1)
    assert got == task
    assert calls[0].url.params["model"] == "1"
    dest = tmp_path / "tasks" / "t1" / "global.safetensors"
    assert client.download_model(task, dest, WorkDir(tmp_path)) == task.model_sha256
    assert dest.read_bytes() == model and len(calls) == 1  # no GET of the model
    dest.unlink()
    client.download_model(task, dest, WorkDir(tmp_path))  # used once: then downloaded
    assert len(calls) == 2 and calls[1].url.path.endswith("/tasks/t1/model")


def test_a_damaged_model_sent_with_its_task_is_downloaded_instead(tmp_path, caplog) -> None:
    model = b"the global model"
    task = make_task(hashlib.sha256(model).hexdigest())
    calls: list[httpx.Request] = []
    client = client_for(_serving(task, b"the global modeX", model, calls), [])
    assert client.next_task(wait_s=1) == task
    dest = tmp_path / "tasks" / "t1" / "global.safetensors"
    assert client.download_model(task, dest, WorkDir(tmp_path)) == task.model_sha256
    assert dest.read_bytes() == model and len(calls) == 2
    assert "does not match its sha256" in caplog.text


@pytest.mark.parametrize("split", ["", "0", "-3", "999999", "x"])
def test_a_malformed_task_and_model_answer_is_refused(split: str) -> None:
    model = b"the global model"
    task = make_task(hashlib.sha256(model).hexdigest())
    client = client_for(lambda r: _task_and_model(task, model, split=split), [])
    with pytest.raises(AggregatorError, match=HEADER_TASK_BYTES):
        client.next_task(wait_s=1)


@pytest.mark.parametrize(
    "params",
    [{"wait": "30", "model": "2"}, {"wait": "case_007"}, {"wait": "30", "site": "x"}],
)
def test_the_guard_lets_a_poll_carry_a_number_and_model_1_only(params: dict[str, str]) -> None:
    sent: list[httpx.Request] = []
    client = client_for(lambda r: sent.append(r) or httpx.Response(204), [])
    assert client.next_task(wait_s=30) is None  # the agent's own poll passes
    with pytest.raises(OutboundRefusedError, match="query"):
        client.http.get("/api/v1/tasks/next", params=params)
    assert len(sent) == 1
