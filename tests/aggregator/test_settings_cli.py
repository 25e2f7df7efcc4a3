"""Settings validation, the CLI and structured logs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from aggregator.cli import app
from aggregator.logs import StructuredFormatter, log_event
from aggregator.settings import AggregatorSettings, default_database_url
from aggregator.storage.db import Database

ROOT = Path(__file__).resolve().parents[2]


def test_refuses_to_start_without_admin_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEDSEG_AGG_ADMIN_TOKEN", raising=False)
    with pytest.raises(ValidationError, match="refusing to start without an admin token"):
        AggregatorSettings(data_dir=tmp_path)
    with pytest.raises(ValidationError, match="at least 16 characters"):
        AggregatorSettings(data_dir=tmp_path, admin_token="short")
    assert AggregatorSettings(data_dir=tmp_path, dev=True).admin_token is None


def test_admin_token_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDSEG_AGG_ADMIN_TOKEN", "from-the-environment-123")
    monkeypatch.setenv("FEDSEG_AGG_MAX_LONG_POLL_S", "5")
    settings = AggregatorSettings(data_dir=tmp_path)
    assert (
        settings.admin_token is not None
        and settings.admin_token.get_secret_value() == "from-the-environment-123"
    )
    assert settings.max_long_poll_s == 5
    token_file = tmp_path / "admin_token"
    token_file.write_text("from-a-file-0123456789\n")
    assert AggregatorSettings(
        data_dir=tmp_path, admin_token_file=token_file
    ).admin_token.get_secret_value() == (  # type: ignore[union-attr]
        "from-a-file-0123456789"
    )
    with pytest.raises(ValidationError, match="cannot be read"):
        AggregatorSettings(data_dir=tmp_path, admin_token_file=tmp_path / "missing")
    with pytest.raises(ValidationError, match="both ssl_certfile and ssl_keyfile"):
        AggregatorSettings(data_dir=tmp_path, ssl_certfile=token_file)
    assert "from-the-environment" not in repr(settings)


def test_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDSEG_AGG_ADMIN_TOKEN", raising=False)
    env = tmp_path / "agg.env"
    env.write_text("FEDSEG_AGG_ADMIN_TOKEN=from-an-env-file-0123\nFEDSEG_AGG_PORT=9123\n")
    settings = AggregatorSettings(_env_file=env, data_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.port == 9123


def test_create_researcher_prints_a_working_token(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["create-researcher", "--data-dir", str(tmp_path), "--name", "carol"]
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[-1]
    from aggregator.crud.principals import researcher_by_token

    database = Database(default_database_url(tmp_path))
    with database.session() as session:
        researcher = researcher_by_token(session, token=token)
        assert researcher is not None and researcher.name == "carol"
    again = CliRunner().invoke(
        app, ["create-researcher", "--data-dir", str(tmp_path), "--name", "carol"]
    )
    assert again.exit_code == 1


def test_the_database_file_keeps_its_released_name(tmp_path: Path) -> None:
    # Data dirs of earlier releases hold ``aggregator.db``: another default name would make an
    # upgraded aggregator start on an empty database next to the real one.
    assert default_database_url(tmp_path) == f"sqlite:///{(tmp_path / 'aggregator.db').resolve()}"
    settings = AggregatorSettings(data_dir=tmp_path, dev=True)
    assert settings.resolved_database_url == default_database_url(tmp_path)


@pytest.mark.slow  # a subprocess, a real server or real training
def test_python_m_aggregator_serve_refuses_without_token(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "aggregator", "serve", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "refusing to start without an admin token" in proc.stderr


def test_structured_logs_drop_secrets() -> None:
    record = logging.LogRecord(
        "aggregator", logging.INFO, __file__, 1, "update.accepted", None, None
    )
    captured: list[logging.LogRecord] = []
    logger = logging.getLogger("test.structured")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler := logging.Handler())
    handler.emit = captured.append  # type: ignore[method-assign]
    log_event(logger, "update.accepted", task_id="t1", bytes=10, site_token="s3cr3t")
    logger.removeHandler(handler)
    line = json.loads(StructuredFormatter("json").format(captured[0]))
    assert line["event"] == "update.accepted" and line["task_id"] == "t1" and line["bytes"] == 10
    assert "site_token" not in line
    assert list(line)[:4] == ["ts", "level", "logger", "event"] and line["level"] == "info"
    kv = StructuredFormatter("kv").format(record)
    assert "event=update.accepted" in kv and "level=info" in kv


def test_structured_logs_keep_only_their_fields_and_the_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "aggregator", logging.ERROR, __file__, 1, "round %s failed", ("r1",), exc_info
    )
    record.color_message = "\x1b[31mround failed"  # uvicorn-style extra: not ours, not logged
    record.fields = {"round": 3, "reason": "too few updates"}
    line = json.loads(StructuredFormatter("json").format(record))
    assert set(line) == {"ts", "level", "logger", "event", "round", "reason", "exc"}
    assert line["event"] == "round r1 failed" and line["round"] == 3
    assert line["exc"].endswith("ValueError: boom") and line["ts"].endswith("+00:00")
    kv = StructuredFormatter("kv").format(record)
    assert 'reason="too few updates"' in kv and "color_message" not in kv


def test_the_default_database_file_keeps_its_name(tmp_path: Path) -> None:
    """Data dirs of earlier releases hold ``aggregator.db``: another name would open an empty one."""
    assert default_database_url(tmp_path) == f"sqlite:///{(tmp_path / 'aggregator.db').resolve()}"
