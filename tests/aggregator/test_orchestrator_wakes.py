"""Only the upload that leaves no sampled site open wakes the orchestrator.

Every upload used to wake it, and each wake-up cost a step (~2 ms of CPU) that found the round
still open: a thousand per 1,000-site round. A round must still close as soon as its last
report is durable (issue 19: the round's overhead), so the last upload wakes it at once.
"""

from __future__ import annotations

import time

import pytest

from aggregator.api.deps import Services
from tests.aggregator.helpers import API, Federation, update_bundle


def _settled(wakes: list[int], services: Services, until: int = 0) -> list[int]:
    """``wakes`` once they have come. On PostgreSQL the round's last report wakes the
    orchestrator through its announcement (``ROUNDS_CHANNEL``), heard on another thread: wait
    for ``until`` wake-ups, then a little longer for any that should not come."""
    if services.announcements is not None:
        deadline = time.monotonic() + 10
        while len(wakes) < until and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
    return wakes


def _upload(fed: Federation, site: str, task: dict[str, object]) -> None:
    r = fed.client.get(f"{API}/tasks/{task['task_id']}/model", headers=fed.sh(site))
    assert r.status_code == 200
    body = update_bundle(
        r.content,
        site=site,
        round_number=int(str(task["round"])),
        num_samples=10,
        spec_hash=str(task["spec_hash"]),
    )
    assert fed.upload(site, str(task["task_id"]), body, 10).status_code == 200


def test_only_the_last_upload_of_a_round_wakes_the_orchestrator(
    fed: Federation, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = fed.create_experiment(rounds=2, min_sites=3)
    fed.start(exp)
    services.orchestrator.step()
    tasks = {site: fed.next_task(site) for site in ("site-a", "site-b", "site-c")}
    wakes: list[int] = []
    monkeypatch.setattr(services.orchestrator, "wake", lambda: wakes.append(1))
    _upload(fed, "site-a", tasks["site-a"])  # type: ignore[arg-type]
    _upload(fed, "site-b", tasks["site-b"])  # type: ignore[arg-type]
    assert _settled(wakes, services) == []  # site-c is open: only the deadline could close it
    _upload(fed, "site-a", tasks["site-a"])  # type: ignore[arg-type]  # a duplicate changes nothing
    assert _settled(wakes, services) == []
    _upload(fed, "site-c", tasks["site-c"])  # type: ignore[arg-type]
    assert _settled(wakes, services, until=1) == [1]
    services.orchestrator.step()  # what the wake-up does: round 1 closes, round 2 opens
    assert fed.rounds(exp)[0]["status"] == "closed"
