"""``fedseg experiments|sites|researchers`` against a live aggregator with running (fake) sites."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from deploy.cli import app
from deploy.console import console_cli
from tests.aggregator.helpers import ADMIN_TOKEN, TINY_SPEC
from tests.ui.live_federation import LiveFederation, live_federation

pytestmark = pytest.mark.slow
SITES = ["hospital-a", "hospital-b"]


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[LiveFederation]:
    with live_federation(tmp_path / "agg", SITES) as federation:
        yield federation


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    for name in ("FEDSEG_URL", "FEDSEG_TOKEN", "FEDSEG_ADMIN_TOKEN", "FEDSEG_CONSOLE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("COLUMNS", "160")  # rich tables: a wide terminal, no ellipses
    # The module's console read COLUMNS when it was imported (pytest-xdist workers set 80).
    monkeypatch.setattr(console_cli, "_out", Console(soft_wrap=True))
    return CliRunner()


def experiment_yaml(tmp_path: Path, rounds: int = 2) -> Path:
    spec = TINY_SPEC.model_dump(mode="json")
    path = tmp_path / "experiment.yaml"
    path.write_text(
        "name: cli-run\n"
        f"spec: {json.dumps(spec)}\n"
        f"rounds: {rounds}\n"
        "min_sites: 2\n"
        "round_deadline_s: 120\n"
        "train:\n  personalization:\n    method: iopfl\n"
    )
    return path


def test_from_token_to_watching_in_three_commands(
    runner: CliRunner, fed: LiveFederation, tmp_path: Path
) -> None:
    env = {"FEDSEG_URL": fed.url, "FEDSEG_ADMIN_TOKEN": ADMIN_TOKEN}
    made = runner.invoke(app, ["researchers", "create", "bob", "--json"], env=env)
    assert made.exit_code == 0, made.output
    token = json.loads(made.stdout)["token"]
    env = {"FEDSEG_URL": fed.url, "FEDSEG_TOKEN": token}
    sites = runner.invoke(app, ["sites", "list", "--json"], env=env)
    assert sites.exit_code == 0 and {s["name"] for s in json.loads(sites.stdout)} >= set(SITES)

    created = runner.invoke(
        app, ["experiments", "create", str(experiment_yaml(tmp_path)), "--start", "--json"], env=env
    )
    assert created.exit_code == 0, created.output
    exp = json.loads(created.stdout)
    assert exp["status"] == "running" and exp["config"]["rounds"] == 2

    watched = runner.invoke(
        app, ["experiments", "watch", exp["id"], "--interval", "0.2", "--timeout", "60"], env=env
    )
    assert watched.exit_code == 0, watched.output
    out = watched.stdout
    assert "round 1 attempt 0: closed; 2/2 sites accepted" in out
    assert "round 2 attempt 0: closed" in out
    assert "Dice per site" in out and "hospital-a" in out and "hospital-b" in out
    # hospital-b (index 1) at round 2: Dice 0.35 + 0.08 + 0.24 = 0.67, global 0.61, personal 0.71
    assert "0.670" in out and "0.610" in out and "0.710" in out

    listed = runner.invoke(app, ["experiments", "list", "--json"], env=env)
    row = next(r for r in json.loads(listed.stdout) if r["id"] == exp["id"])
    assert row["status"] == "completed" and row["rounds_done"] == 2
    assert row["best_dice"] == pytest.approx((0.59 + 0.67) / 2)

    shown = runner.invoke(app, ["experiments", "show", exp["id"], "--json"], env=env)
    rounds = json.loads(shown.stdout)["rounds"]
    assert [r["status"] for r in rounds] == ["closed", "closed"]
    human = runner.invoke(app, ["experiments", "show", exp["id"]], env=env)
    assert human.exit_code == 0 and "accepted" in human.stdout and "0.710" in human.stdout

    target = tmp_path / "model.safetensors"
    got = runner.invoke(
        app,
        ["experiments", "download-model", exp["id"], "--round", "2", "-o", str(target), "--json"],
        env=env,
    )
    assert got.exit_code == 0, got.output
    info = json.loads(got.stdout)
    assert info["sha256"] == hashlib.sha256(target.read_bytes()).hexdigest()
    assert info["sha256"] == rounds[1]["model_sha256"]


def test_watch_json_lines_and_state_changes(
    runner: CliRunner, fed: LiveFederation, tmp_path: Path
) -> None:
    env = {"FEDSEG_URL": fed.url, "FEDSEG_TOKEN": fed.researcher_token}
    exp_id = fed.create_experiment("json-run", rounds=1)
    started = runner.invoke(app, ["experiments", "start", exp_id], env=env)
    assert started.exit_code == 0 and "running" in started.stdout
    watched = runner.invoke(
        app, ["experiments", "watch", exp_id, "--json", "--interval", "0.2"], env=env
    )
    assert watched.exit_code == 0, watched.output
    record = json.loads(watched.stdout.strip().splitlines()[0])
    assert record["round"] == 1 and record["status"] == "closed"
    assert {s["site"] for s in record["sites"]} == set(SITES)

    other = fed.create_experiment("to-abort", rounds=50)
    assert runner.invoke(app, ["experiments", "start", other], env=env).exit_code == 0
    paused = runner.invoke(app, ["experiments", "pause", other, "--json"], env=env)
    assert paused.exit_code == 0 and json.loads(paused.stdout)["status"] == "paused"
    aborted = runner.invoke(app, ["experiments", "abort", other], env=env)
    assert aborted.exit_code == 0 and "aborted" in aborted.stdout
    again = runner.invoke(app, ["experiments", "start", other], env=env)
    assert again.exit_code == 3 and "HTTP 409" in again.stderr
    ended = runner.invoke(app, ["experiments", "watch", other, "--interval", "0.2"], env=env)
    assert ended.exit_code == 5 and "aborted" in ended.stderr

    outside = runner.invoke(app, ["sites", "register", "outside-x", "--json"], env=env)
    site_id = json.loads(outside.stdout)["id"]
    granted = runner.invoke(app, ["experiments", "grant", exp_id, site_id], env=env)
    assert granted.exit_code == 0 and "outside-x" in granted.stdout


def test_exit_codes_for_scripts(runner: CliRunner, fed: LiveFederation, tmp_path: Path) -> None:
    bad = experiment_yaml(tmp_path).read_text().replace("rounds: 2", "rounds: -3")
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text(bad)
    env = {"FEDSEG_URL": fed.url, "FEDSEG_TOKEN": fed.researcher_token}
    invalid = runner.invoke(app, ["experiments", "create", str(bad_file)], env=env)
    assert invalid.exit_code == 1
    assert f"{bad_file}:3: rounds: Input should be greater than or equal to 1" in invalid.stderr
    assert "Traceback" not in invalid.output

    no_token = runner.invoke(app, ["experiments", "list"], env={"FEDSEG_URL": fed.url})
    assert no_token.exit_code == 1 and "FEDSEG_TOKEN" in no_token.stderr
    wrong = runner.invoke(
        app, ["experiments", "list"], env={"FEDSEG_URL": fed.url, "FEDSEG_TOKEN": "nope"}
    )
    assert wrong.exit_code == 3 and "HTTP 401" in wrong.stderr
    missing = runner.invoke(app, ["experiments", "show", "0" * 32], env=env)
    assert missing.exit_code == 3 and "HTTP 404" in missing.stderr
    down = runner.invoke(
        app, ["experiments", "list"], env={"FEDSEG_URL": "http://127.0.0.1:9", "FEDSEG_TOKEN": "x"}
    )
    assert down.exit_code == 4 and "cannot reach" in down.stderr
    on_cli = runner.invoke(app, ["experiments", "list", "--token", "secret"], env=env)
    assert on_cli.exit_code == 2  # no such option: tokens never travel on the command line

    cfg = tmp_path / "console.toml"
    cfg.write_text(f'url = "{fed.url}"\ntoken = "{fed.researcher_token}"\n')
    cfg.chmod(0o644)
    unsafe = runner.invoke(app, ["experiments", "list", "--config", str(cfg)])
    assert unsafe.exit_code == 1 and "chmod 600" in unsafe.stderr
    cfg.chmod(0o600)
    safe = runner.invoke(app, ["experiments", "list", "--config", str(cfg), "--json"])
    assert safe.exit_code == 0 and json.loads(safe.stdout) == []
