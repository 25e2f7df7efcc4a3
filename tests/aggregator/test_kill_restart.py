"""``kill -9`` mid-round and restart on the same data dir: nothing accepted is lost, and the final
global model is byte-identical to an uninterrupted run from the same state with the same updates."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from aggregator.api.app import create_app
from aggregator.settings import AggregatorSettings
from tests.aggregator.e2e_helpers import free_port
from tests.aggregator.helpers import (
    ADMIN_TOKEN,
    API,
    Federation,
    sha256,
    update_bundle,
    upload_headers,
)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SITES = ["site-a", "site-b", "site-c"]
ROUNDS = 3


class ServerProcess:
    """``python -m aggregator serve`` in a subprocess on a free port."""

    def __init__(self, data_dir: Path, token_file: Path, log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "FEDSEG_AGG_ORCHESTRATOR_INTERVAL_S": "0.1",
            "FEDSEG_AGG_LOG_LEVEL": "WARNING",
        }
        cmd = [
            sys.executable,
            "-m",
            "aggregator",
            "serve",
            "--data-dir",
            str(data_dir),
            "--port",
            str(self.port),
            "--admin-token-file",
            str(token_file),
        ]
        self._log = log.open("ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + 300  # a loaded CI box imports slowly
        while True:
            assert self.proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self._log.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    """Start servers; any still running when the test ends (say, after a failure) are killed."""
    token_file = tmp_path / "admin_token"
    token_file.write_text(ADMIN_TOKEN)
    started: list[ServerProcess] = []

    def _spawn(data_dir: Path) -> ServerProcess:
        server = ServerProcess(data_dir, token_file, tmp_path / "server.log")
        started.append(server)
        return server

    yield _spawn
    for server in started:
        if server.proc.poll() is None:
            server.stop(signal.SIGKILL)


def set_up(data_dir: Path) -> dict[str, Any]:
    """Researcher, three sites and a started experiment, made in process (torch is loaded here
    already, so the servers under test never pay for it)."""
    settings = AggregatorSettings(
        data_dir=data_dir, admin_token=ADMIN_TOKEN, orchestrator_enabled=False
    )
    with TestClient(create_app(settings)) as client:
        fed = Federation.create(client, SITES)
        exp = fed.create_experiment(
            rounds=ROUNDS, fraction=0.5, min_sites=2, seed=5
        )  # 2 of 3 a round
        fed.start(exp)
    return {"researcher": fed.researcher_token, "sites": fed.sites, "exp": exp, "uploads": []}


def drive(base: str, state: dict[str, Any], *, kill_after_round: int | None = None) -> bool:
    """Play the sites until the experiment completes; returns False right after the first accepted
    upload of round ``kill_after_round``."""
    with httpx.Client(base_url=base, timeout=30) as client:
        fed = Federation(client, state["researcher"], state["sites"])
        deadline = time.monotonic() + 300  # generous for a loaded CI box
        # One read per pass: the round may close (and complete the experiment) in between.
        while (status := fed.experiment(state["exp"])["status"]) != "completed":
            assert status == "running", status
            assert time.monotonic() < deadline, fed.rounds(state["exp"])
            for name in SITES:
                task = fed.next_task(name, wait=0.05)
                if task is None:
                    continue
                model = fed.model(name, task["task_id"])
                n = 10 + 7 * SITES.index(name)
                body = update_bundle(
                    model,
                    site=name,
                    round_number=task["round"],
                    num_samples=n,
                    spec_hash=task["spec_hash"],
                )
                r = client.put(
                    f"{API}/tasks/{task['task_id']}/update",
                    content=body,
                    headers=upload_headers(fed.sites[name][1], body, n),
                )
                assert r.status_code == 200 and r.json()["accepted"], r.text
                state["uploads"].append((name, task["round"], task["task_id"], body))
                if kill_after_round == task["round"]:
                    return False
        return True


def final_models(base: str, state: dict[str, Any]) -> list[str]:
    with httpx.Client(base_url=base, timeout=30) as client:
        fed = Federation(client, state["researcher"], state["sites"])
        return [sha256(fed.round_model(state["exp"], r)) for r in range(ROUNDS + 1)]


def test_kill_9_mid_round_then_restart_is_bit_identical(tmp_path: Path, spawn: Any) -> None:
    setup_dir, killed_dir, clean_dir = tmp_path / "setup", tmp_path / "killed", tmp_path / "clean"
    state = set_up(setup_dir)
    shutil.copytree(setup_dir, killed_dir)
    shutil.copytree(setup_dir, clean_dir)

    # Uninterrupted reference run.
    clean = spawn(clean_dir)
    assert drive(clean.base, {**state, "uploads": []})
    want = final_models(clean.base, state)
    clean.stop()

    # Same state, SIGKILLed right after round 2's first accepted upload (its 200 was received).
    first = spawn(killed_dir)
    assert drive(first.base, state, kill_after_round=2) is False
    first.stop(signal.SIGKILL)

    restarted = spawn(killed_dir)
    with httpx.Client(base_url=restarted.base, timeout=30) as client:
        fed = Federation(client, state["researcher"], state["sites"])
        round2 = next(r for r in fed.rounds(state["exp"]) if r["number"] == 2)
        accepted = [s for s in round2["sites"] if s["status"] == "accepted"]
        name, _, task_id, body = state["uploads"][-1]
        assert round2["status"] == "open"
        assert [s["update_sha256"] for s in accepted] == [
            sha256(body)
        ]  # the accepted update survived
        n = 10 + 7 * SITES.index(name)
        again = client.put(
            f"{API}/tasks/{task_id}/update",
            content=body,
            headers=upload_headers(fed.sites[name][1], body, n),
        )
        assert again.status_code == 200 and again.json()["duplicate"] is True
    assert drive(restarted.base, state)
    got = final_models(restarted.base, state)
    restarted.stop()
    assert got == want
