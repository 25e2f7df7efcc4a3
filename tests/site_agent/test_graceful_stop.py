"""SIGTERM (``docker stop``) to a real ``fedseg site run`` process: a prompt, clean stop and resume.

The agent runs as a subprocess against a real aggregator on loopback. It is stopped once while
idle in the long poll and once in the middle of training; each time it must exit with code 0
within 5 s, leave no temp file and a valid ``state.json``, and the restarted agent must finish
the round it was stopped in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from site_agent.federation.workdir import TaskPhase, TaskState, WorkDir
from tests.site_agent.conftest import TINY, write_site
from tests.site_agent.federation import live_aggregator

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
STOP_BUDGET_S = 5.0
# Long enough that a stop lands during training (a few seconds on one thread), short enough to rerun.
SLOW_TRAIN = {"local_epochs": 40, "batch_size": 2, "lr": 0.01, "optimizer": "adam"}


def start_agent(root: Path, url: str, token: str, *extra: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "FEDSEG_SITE_AGGREGATOR_URL": url,
        "FEDSEG_SITE_ALLOW_INSECURE_HTTP": "true",
        "FEDSEG_SITE_ENROLLMENT_TOKEN": token,
        "FEDSEG_SITE_MANIFEST": str(root / "data" / "dataset.json"),
        "FEDSEG_SITE_WORK_DIR": str(root / "work"),
        "FEDSEG_SITE_DEVICE": "cpu",
        "FEDSEG_SITE_POLL_WAIT_S": "30",
        "FEDSEG_SITE_ACCEPT_EXPERIMENTS": '["*"]',
        "MPLCONFIGDIR": str(root / "mpl"),
    }
    log = (root / "agent.log").open("ab")
    cmd = [sys.executable, "-m", "site_agent", "run", "--log-level", "DEBUG", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)


def wait_until(predicate, timeout_s: float, what: str, proc: subprocess.Popen[bytes]) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert proc.poll() is None, f"agent exited early ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def stop(proc: subprocess.Popen[bytes]) -> float:
    """SIGTERM the agent; return the seconds until it exited."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("the agent ignored SIGTERM for 30 s") from None
    return time.monotonic() - t0


def phase(work: WorkDir) -> str | None:
    try:
        return json.loads(work.state_path.read_text())["phase"]
    except (OSError, ValueError, KeyError):
        return None


def partial_files(work: Path) -> list[Path]:
    return [p for p in work.rglob("*") if p.name.endswith(".tmp")]


def test_sigterm_idle_and_mid_round_stops_within_5_s_and_resumes(tmp_path: Path) -> None:
    root = tmp_path / "hospital"
    write_site(root / "data", n_train=4, n_val=1, n_test=1)
    work = WorkDir(root / "work")
    with live_aggregator(tmp_path / "agg") as agg:
        site_id, token = agg.add_site("hospital")

        # 1. Idle: enrolled and waiting in a 30 s long poll.
        proc = start_agent(root, agg.url, token)
        wait_until(lambda: work.token_path.is_file(), 240, "enrollment", proc)
        time.sleep(1.0)  # inside GET /tasks/next
        took = stop(proc)
        assert proc.returncode == 0, (root / "agent.log").read_text()[-2000:]
        assert took < STOP_BUDGET_S, f"idle agent took {took:.1f} s to stop"
        print(f"idle agent stopped in {took:.2f} s")

        # 2. Mid-round: the global model is on disk and training runs.
        experiment_id = agg.create_experiment(TINY, rounds=1, sites=[site_id], train=SLOW_TRAIN)
        proc = start_agent(root, agg.url, token)
        wait_until(lambda: phase(work) == TaskPhase.DOWNLOADED, 240, "training", proc)
        time.sleep(0.5)
        took = stop(proc)
        log = (root / "agent.log").read_text()
        assert proc.returncode == 0, log[-2000:]
        assert took < STOP_BUDGET_S, f"training agent took {took:.1f} s to stop"
        print(f"training agent stopped in {took:.2f} s")
        assert "stopped by SIGTERM" in log
        assert partial_files(work.root) == []
        state = work.load_state()
        assert isinstance(state, TaskState) and state.phase == TaskPhase.DOWNLOADED
        task_dir = work.task_dir(state.task.task_id)
        assert (task_dir / "global.safetensors").is_file()
        assert not (task_dir / "update.safetensors").exists()  # nothing half-trained was kept
        assert agg.rounds(experiment_id)[0]["sites"] == [] or all(
            s.get("status") != "accepted" for s in agg.rounds(experiment_id)[0]["sites"]
        )

        # 3. Restart: the task resumes from the downloaded model and the round completes.
        proc = start_agent(root, agg.url, token, "--once")
        assert proc.wait(timeout=240) == 0, (root / "agent.log").read_text()[-2000:]
        assert "resuming task" in (root / "agent.log").read_text()
        agg.wait_for(experiment_id, "completed", timeout=60)
        sites = agg.rounds(experiment_id)[0]["sites"]
        assert [s["site_id"] for s in sites] == [site_id]
        assert work.load_state() is None and partial_files(work.root) == []
