"""``kill -9`` mid-round and restart on the same data dir: nothing accepted is lost, and the final
global model is byte-identical to an uninterrupted run from the same state with the same updates."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from aggregator.api.app import create_app
from aggregator.settings import AggregatorSettings
from tests.aggregator.helpers import (
    ADMIN_TOKEN,
    API,
    Federation,
    sha256,
    update_bundle,
    upload_headers,
)
from tests.aggregator.postgres import PostgresServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # three server start-ups
ROOT = Path(__file__).resolve().parents[2]
SITES = ["site-a", "site-b", "site-c"]
ROUNDS = 3


def set_up(data_dir: Path, database_url: str | None = None) -> dict[str, Any]:
    """Researcher, three sites and a started experiment, made in process (torch is loaded here
    already, so the servers under test never pay for it)."""
    settings = AggregatorSettings(
        data_dir=data_dir,
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        orchestrator_enabled=False,
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


def copies_of(
    setup_dir: Path, request: pytest.FixtureRequest, backend: str, names: tuple[str, ...]
) -> tuple[dict[str, Any], list[tuple[Path, str | None]]]:
    """Set up once, then copy the data dir (and the PostgreSQL database) for each run."""
    if backend == "sqlite":
        state = set_up(setup_dir)
        copies: list[tuple[Path, str | None]] = []
        for name in names:
            shutil.copytree(setup_dir, setup_dir.parent / name)
            copies.append((setup_dir.parent / name, None))
        return state, copies
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.database_url()
    state = set_up(setup_dir, url)
    copies = []
    for name in names:
        shutil.copytree(setup_dir, setup_dir.parent / name)
        copies.append((setup_dir.parent / name, server.clone(url, name)))
    return state, copies


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill_9_mid_round_then_restart_is_bit_identical(
    tmp_path: Path, spawn: Any, backend: str, request: pytest.FixtureRequest
) -> None:
    state, [(killed_dir, killed_url), (clean_dir, clean_url)] = copies_of(
        tmp_path / "setup", request, backend, ("killed", "clean")
    )

    # Uninterrupted reference run.
    clean = spawn(clean_dir, clean_url)
    assert drive(clean.base, {**state, "uploads": []})
    want = final_models(clean.base, state)
    clean.stop()

    # Same state, SIGKILLed right after round 2's first accepted upload (its 200 was received).
    first = spawn(killed_dir, killed_url)
    assert drive(first.base, state, kill_after_round=2) is False
    first.stop(signal.SIGKILL)

    restarted = spawn(killed_dir, killed_url)
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
