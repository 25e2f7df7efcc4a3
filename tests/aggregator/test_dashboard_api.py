"""The dashboard's read-only routes and static page, in memory: figures, scoping, safe files."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from aggregator.api.deps import Services
from tests.aggregator.helpers import ADMIN_TOKEN, API, Federation, bearer

DICE = {"site-a": [0.5, 0.6], "site-b": [0.7, None], "site-c": [0.2, 0.9]}


def run_two_rounds(fed: Federation, services: Services) -> str:
    exp = fed.create_experiment(rounds=2, min_sites=2)
    fed.start(exp)
    services.orchestrator.step()
    for round_number in (1, 2):
        for name, dices in DICE.items():
            task = fed.next_task(name)
            assert task is not None
            dice = dices[round_number - 1]
            if dice is None:  # site-b gives up in round 2: it must not appear as a figure
                r = fed.client.post(
                    f"{API}/tasks/{task['task_id']}/failure",
                    json={"reason": "out of memory"},
                    headers=fed.sh(name),
                )
                assert r.status_code == 200, r.text
                continue
            metrics = {"val_dice": dice, "val_dice_personal": dice + 0.05, "train_loss": 1.0}
            r = fed.train_and_upload(name, task, num_samples=10, metrics=metrics)
            assert r.status_code == 200, r.text
        services.orchestrator.step()
    return exp


def test_summaries_series_rounds_and_detail(fed: Federation, services: Services) -> None:
    exp = run_two_rounds(fed, services)
    rows = fed.client.get(f"{API}/dashboard/experiments", headers=fed.rh).json()
    row = next(r for r in rows if r["id"] == exp)
    assert row["status"] == "completed" and row["rounds_done"] == 2 and row["rounds"] == 2
    # Best mean Dice over rounds: round 1 (0.5+0.7+0.2)/3 = 0.4667, round 2 (0.6+0.9)/2 = 0.75.
    assert row["best_dice"] == pytest.approx(0.75)

    series = fed.client.get(f"{API}/dashboard/experiments/{exp}/series", headers=fed.rh).json()
    assert series["rounds"] == [1, 2]
    by_name = {s["site_name"]: s for s in series["sites"]}
    for name, dices in DICE.items():
        assert by_name[name]["val_dice"] == dices
    assert by_name["site-c"]["val_dice_personal"] == pytest.approx([0.25, 0.95])
    assert "val_dice_global" not in by_name["site-a"]  # never reported: left out

    summary = fed.client.get(f"{API}/dashboard/experiments/{exp}/rounds", headers=fed.rh).json()
    assert [(r["number"], r["accepted"], r["rejected"], r["sampled"]) for r in summary] == [
        (1, 3, 0, 3),
        (2, 2, 1, 3),
    ]
    assert summary[0]["samples"] == 30 and summary[0]["bytes_up"] > 0

    detail = fed.client.get(f"{API}/dashboard/experiments/{exp}/rounds/2", headers=fed.rh).json()
    sites = {s["site_name"]: s for s in detail["sites"]}
    assert sites["site-b"]["status"] == "failed"
    assert sites["site-b"]["failure_reason"] == "out of memory"
    assert sites["site-a"]["metrics"]["val_dice"] == 0.6
    for s in detail["sites"]:
        assert 0 <= s["delivered_s"] <= s["reported_s"] <= detail["closed_s"]
    missing = fed.client.get(f"{API}/dashboard/experiments/{exp}/rounds/9", headers=fed.rh)
    assert missing.status_code == 404


def test_other_researchers_and_bad_tokens_see_nothing(fed: Federation, services: Services) -> None:
    exp = run_two_rounds(fed, services)
    r = fed.client.post(f"{API}/researchers", json={"name": "eve"}, headers=bearer(ADMIN_TOKEN))
    eve = bearer(r.json()["token"])
    assert fed.client.get(f"{API}/dashboard/experiments", headers=eve).json() == []
    for path in ("series", "rounds", "rounds/1"):
        got = fed.client.get(f"{API}/dashboard/experiments/{exp}/{path}", headers=eve)
        assert got.status_code == 404, path
    bad = fed.client.get(f"{API}/dashboard/experiments", headers=bearer("wrong"))
    assert bad.status_code == 401


def test_the_page_is_served_from_the_package_with_strict_headers(client: TestClient) -> None:
    assert client.get("/ui", follow_redirects=False).headers["location"] == "/ui/"
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'src="/ui/app.js"' in page.text and "http" not in page.text.split("<body>")[1]
    script = client.get("/ui/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "sessionStorage" in script.text and "cdn" not in script.text.lower()
    for name in ("app.py", ".hidden.js", "..%2Fapi%2Froutes%2Fui.py", "nope.css"):
        assert client.get(f"/ui/{name}").status_code == 404, name
