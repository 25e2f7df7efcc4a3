"""The site's fingerprint: what ``fedseg site fingerprint`` prints is what the agent sends, once
at start-up and again when the manifest changes; the guard lets only a fingerprint through."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from data_specs.manifests.fingerprint import DatasetFingerprint, compute_fingerprint
from data_specs.manifests.manifest import load_manifest
from site_agent.cli import app
from site_agent.errors import OutboundRefusedError
from site_agent.federation.client import AggregatorClient
from site_agent.federation.fingerprints import FingerprintSync
from site_agent.federation.retry import Backoff
from site_agent.federation.workdir import WorkDir
from tests.site_agent.conftest import write_site

runner = CliRunner()


def recording_client(sent: list[httpx.Request], status: int = 200) -> AggregatorClient:
    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(status, json={"detail": "nope"} if status >= 400 else {})

    http = httpx.Client(base_url="https://agg.test", transport=httpx.MockTransport(handler))
    return AggregatorClient(
        http, backoff=Backoff(0.01, 0.01, 0, sleep=lambda _: None), token=SecretStr("tok-12345")
    )


def test_cli_prints_exactly_what_the_agent_sends(tmp_path: Path) -> None:
    manifest = write_site(tmp_path / "data", prefix="patient4711", site_id="st-mary")
    result = runner.invoke(
        app,
        ["fingerprint", "--manifest", str(manifest), "--work-dir", str(tmp_path / "w"), "--json"],
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed == compute_fingerprint(load_manifest(manifest)).model_dump(mode="json")
    assert "patient4711" not in result.output and "st-mary" not in result.output

    sent: list[httpx.Request] = []
    sync = FingerprintSync(manifest, WorkDir(tmp_path / "w"), recording_client(sent))
    assert sync.sync() is True
    assert len(sent) == 1 and sent[0].url.path == "/api/v1/sites/me/fingerprint"
    assert json.loads(sent[0].content) == printed

    human = runner.invoke(
        app, ["fingerprint", "--manifest", str(manifest), "--work-dir", str(tmp_path / "w")]
    )
    assert human.exit_code == 0 and "num_cases: 6" in human.output


def test_cli_says_why_there_is_no_fingerprint(tmp_path: Path) -> None:
    manifest = write_site(tmp_path / "data", n_train=1)
    result = runner.invoke(
        app, ["fingerprint", "--manifest", str(manifest), "--work-dir", str(tmp_path / "w")]
    )
    assert result.exit_code == 1 and "at least 2 training cases" in result.output
    assert "Traceback" not in result.output
    missing = runner.invoke(app, ["fingerprint", "--manifest", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_sync_sends_at_start_and_again_only_when_the_manifest_changes(tmp_path: Path) -> None:
    manifest = write_site(tmp_path / "data", n_train=4)
    sent: list[httpx.Request] = []
    sync = FingerprintSync(manifest, WorkDir(tmp_path / "w"), recording_client(sent))
    assert sync.sync() is True
    assert sync.sync() is False and len(sent) == 1  # unchanged manifest: nothing sent
    data = json.loads(manifest.read_text())
    data["training"] = data["training"][:3]
    manifest.write_text(json.dumps(data))
    assert sync.sync() is True and len(sent) == 2
    assert json.loads(sent[1].content)["num_cases"] == 3
    cached = json.loads((tmp_path / "w" / "fingerprint.json").read_text())
    assert cached["fingerprint"]["num_cases"] == 3


def test_an_outside_site_without_labels_sends_nothing_and_does_not_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = write_site(tmp_path / "data", n_train=3)
    data = json.loads(manifest.read_text())
    data["adaptation"] = [c["image"] for c in data["training"]]
    data["training"] = []
    manifest.write_text(json.dumps(data))
    sent: list[httpx.Request] = []
    sync = FingerprintSync(manifest, WorkDir(tmp_path / "w"), recording_client(sent))
    with caplog.at_level("INFO"):
        assert sync.sync() is False
    assert sent == [] and not [r for r in caplog.records if r.levelname == "WARNING"]
    assert "no labelled training cases" in caplog.text


def test_sync_survives_an_aggregator_without_the_route(tmp_path: Path) -> None:
    manifest = write_site(tmp_path / "data", n_train=3)
    sent: list[httpx.Request] = []
    sync = FingerprintSync(manifest, WorkDir(tmp_path / "w"), recording_client(sent, 404))
    assert sync.sync() is False and len(sent) == 1  # logged, retried at the next poll
    assert sync.sync() is False and len(sent) == 2


def test_guard_lets_only_a_fingerprint_out(tmp_path: Path) -> None:
    manifest = write_site(tmp_path / "data", n_train=3)
    good = compute_fingerprint(load_manifest(manifest))
    sent: list[httpx.Request] = []
    client = recording_client(sent)
    client.send_fingerprint(good)
    assert len(sent) == 1
    body = {**good.model_dump(mode="json"), "cases": ["images/case_tr_000.nii.gz"]}
    with pytest.raises(OutboundRefusedError, match="DatasetFingerprint"):
        client.http.put("/api/v1/sites/me/fingerprint", json=body)
    with pytest.raises(OutboundRefusedError, match="DatasetFingerprint"):
        client.http.put("/api/v1/sites/me/fingerprint", json={"spacing": [[0.8, 0.8]]})
    assert len(sent) == 1
    assert DatasetFingerprint.model_validate_json(sent[0].content) == good
