"""Settings refuse unsafe or malformed values; the work dir writes atomically and keeps tokens 0600."""

from __future__ import annotations

import errno
import os
import stat

import pytest
from pydantic import SecretStr

from data_specs.task_spec import TaskSpec
from data_specs.wire import TaskAssignment, TrainConfig
from site_agent.errors import SiteSettingsError, WorkDirError
from site_agent.federation.workdir import TaskPhase, TaskState, WorkDir, safe_id
from site_agent.settings import SiteSettings


def test_plain_http_is_refused_unless_allowed(monkeypatch) -> None:
    monkeypatch.setenv("FEDSEG_SITE_AGGREGATOR_URL", "http://127.0.0.1:8000")
    with pytest.raises(SiteSettingsError, match="plain http"):
        SiteSettings.load()
    assert SiteSettings.load(allow_insecure_http=True).aggregator_url == "http://127.0.0.1:8000"
    assert SiteSettings.load(aggregator_url="https://agg.example:8443/").aggregator_url == (
        "https://agg.example:8443"
    )


def test_settings_file_env_and_errors_never_echo_tokens(tmp_path, monkeypatch) -> None:
    config = tmp_path / "site.env"
    config.write_text(
        "FEDSEG_SITE_AGGREGATOR_URL=https://agg.example\n"
        "FEDSEG_SITE_ENROLLMENT_TOKEN=very-secret-enrollment-token\n"
        "FEDSEG_SITE_POLL_WAIT_S=5\n"
    )
    monkeypatch.setenv("FEDSEG_SITE_POLL_WAIT_S", "7")
    settings = SiteSettings.load(config, work_dir=str(tmp_path / "w"), device=None)
    assert settings.poll_wait_s == 7  # environment beats the file
    assert settings.enrollment_token.get_secret_value() == "very-secret-enrollment-token"
    assert "very-secret" not in repr(settings)
    with pytest.raises(SiteSettingsError) as err:
        SiteSettings.load(config, poll_wait_s=0, site_token=["not", "a", "token-secret-xyz"])
    assert "poll_wait_s" in str(err.value) and "token-secret-xyz" not in str(err.value)
    with pytest.raises(SiteSettingsError, match="does not exist"):
        SiteSettings.load(tmp_path / "missing.env")
    with pytest.raises(SiteSettingsError, match="ca_bundle"):
        SiteSettings.load(ca_bundle=str(tmp_path / "nope.pem"))
    with pytest.raises(SiteSettingsError, match="credentials"):
        SiteSettings.load(aggregator_url="https://user:pw@agg.example")
    with pytest.raises(SiteSettingsError, match="no aggregator URL"):
        SiteSettings.load(aggregator_url="").require_aggregator()


def test_token_is_kept_private_and_ids_are_plain_names(tmp_path) -> None:
    workdir = WorkDir(tmp_path / "w")
    assert workdir.read_token() is None
    workdir.write_token(SecretStr("tok-123"))
    assert workdir.read_token().get_secret_value() == "tok-123"
    assert stat.S_IMODE(os.stat(workdir.token_path).st_mode) == 0o600
    for bad in ("../x", "a/b", ".hidden", "", "x" * 200):
        with pytest.raises(WorkDirError):
            safe_id(bad)


def test_state_round_trip_and_corrupt_state(tmp_path) -> None:
    workdir = WorkDir(tmp_path)
    spec = TaskSpec()
    task = TaskAssignment(
        task_id="t1",
        experiment_id="e1",
        round=1,
        spec=spec,
        spec_hash=spec.spec_hash(),
        model_sha256="0" * 64,
        model_size=1,
        train=TrainConfig(),
    )
    workdir.save_state(TaskState(task=task, phase=TaskPhase.TRAINED, update_sha256="a" * 64))
    assert workdir.load_state().phase == TaskPhase.TRAINED
    workdir.state_path.write_text("{not json")
    with pytest.raises(WorkDirError, match="not a valid task state"):
        workdir.load_state()


def test_full_disk_leaves_nothing_half_written(tmp_path, monkeypatch) -> None:
    workdir = WorkDir(tmp_path)
    target = tmp_path / "global" / "e1.safetensors"
    workdir.write_bytes(target, b"old")
    real_fsync = os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WorkDirError, match="disk full"):
        workdir.write_bytes(target, b"new" * 1000)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["e1.safetensors"]
