"""The dashboard's Sites page data (issue 15's consent, scoped) and ε per round on its rounds views."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from fastapi.testclient import TestClient

from aggregator.api.deps import Services
from data_specs.privacy.accountant import epsilon
from tests.aggregator.helpers import ADMIN_TOKEN, API, Federation, bearer


def _enroll(fed: Federation, name: str) -> tuple[str, dict[str, str]]:
    """A site enrolled without a standing policy (it decides one by one)."""
    r = fed.client.post(f"{API}/sites", json={"name": name}, headers=fed.rh)
    r = fed.client.post(
        f"{API}/sites/enroll", json={"enrollment_token": r.json()["enrollment_token"]}
    )
    assert r.status_code == 200, r.text
    return r.json()["site_id"], bearer(r.json()["site_token"])


def _by_name(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in rows}


def _approvals(site: dict[str, Any]) -> dict[str, tuple[str, str | None, bool | None]]:
    return {
        a["experiment_id"]: (a["decision"], a["by"], a["participant"]) for a in site["approvals"]
    }


def test_sites_show_policy_and_approvals_of_the_callers_open_experiments(
    client: TestClient,
) -> None:
    fed = Federation.create(client, [])
    sites = {name: _enroll(fed, name) for name in ("h1", "h2", "h3")}
    policy = ["researcher:alice", "researcher:bob", "0123456789abcdef"]
    r = client.put(
        f"{API}/sites/me/consent-policy", json={"accept": policy}, headers=sites["h2"][1]
    )
    assert r.status_code == 200, r.text
    exp = fed.create_experiment(name="everyone", min_sites=2)
    only_h1 = fed.create_experiment(name="only-h1", sites=[sites["h1"][0]])
    assert client.post(f"{API}/invitations/{exp}/approve", headers=sites["h1"][1]).is_success
    assert client.post(f"{API}/invitations/{exp}/decline", headers=sites["h3"][1]).is_success

    view = _by_name(client.get(f"{API}/dashboard/sites", headers=fed.rh).json())
    assert list(view) == ["h1", "h2", "h3"]
    assert _approvals(view["h1"]) == {
        exp: ("approved", "site", None),
        only_h1: ("pending", None, None),
    }
    assert _approvals(view["h2"]) == {exp: ("approved", "policy", None)}  # not invited to only-h1
    assert _approvals(view["h3"]) == {exp: ("declined", "site", None)}
    # Of h2's policy alice sees her own entry; bob's entry and the unknown id are only counted.
    assert view["h2"]["policy"] == {"entries": ["researcher:alice"], "hidden": 2}
    assert view["h1"]["policy"] == {"entries": [], "hidden": 0}
    assert view["h1"]["status"] == "enrolled" and view["h1"]["enrolled_at"] is not None
    assert "token_hash" not in view["h1"] and "accept_policy" not in view["h1"]

    # Started: participants are fixed (the approving sites), the declining one stays out.
    fed.start(exp)
    view = _by_name(client.get(f"{API}/dashboard/sites", headers=fed.rh).json())
    assert _approvals(view["h1"])[exp] == ("approved", "site", True)
    assert _approvals(view["h2"])[exp] == ("approved", "policy", True)
    assert _approvals(view["h3"])[exp] == ("declined", "site", False)
    assert view["h1"]["approvals"][0]["experiment_status"] == "running"

    # Ended experiments leave the page.
    assert client.post(f"{API}/experiments/{exp}/abort", headers=fed.rh).is_success
    view = _by_name(client.get(f"{API}/dashboard/sites", headers=fed.rh).json())
    assert _approvals(view["h1"]) == {only_h1: ("pending", None, None)}
    assert view["h2"]["approvals"] == []

    # Another researcher sees the sites, none of alice's experiments, only bob's policy entry.
    r = client.post(f"{API}/researchers", json={"name": "bob"}, headers=bearer(ADMIN_TOKEN))
    bob = _by_name(client.get(f"{API}/dashboard/sites", headers=bearer(r.json()["token"])).json())
    assert all(s["approvals"] == [] for s in bob.values())
    assert bob["h2"]["policy"] == {"entries": ["researcher:bob"], "hidden": 2}
    assert client.get(f"{API}/dashboard/sites", headers=bearer("wrong")).status_code == 401
    assert client.get(f"{API}/dashboard/sites", headers=sites["h1"][1]).status_code in (401, 403)


def test_dashboard_rounds_carry_epsilon_per_round_and_in_total(
    fed: Federation, services: Services
) -> None:
    dp = {"clip_norm": 100.0, "noise_multiplier": 2.0, "delta": 1e-5, "epsilon_budget": 50.0}
    exp = fed.create_experiment(rounds=2, privacy={"dp": dp})
    plain = fed.create_experiment(rounds=1)
    fed.start(exp)
    for _ in range(2):
        services.orchestrator.step()
        for name in fed.sites:
            task = fed.next_task(name)
            assert task is not None
            assert fed.train_and_upload(name, task).status_code == 200
    services.orchestrator.step()
    assert fed.experiment(exp)["status"] == "completed"

    summary = client_get(fed, f"/dashboard/experiments/{exp}/rounds")
    q = 1.0  # every participant is sampled (fraction 1)
    assert [r["privacy"]["epsilon_total"] for r in summary] == pytest.approx(
        [epsilon(2.0, q, 1, 1e-5), epsilon(2.0, q, 2, 1e-5)]
    )
    assert all(
        r["privacy"]["epsilon_round"] == pytest.approx(epsilon(2.0, q, 1, 1e-5)) for r in summary
    )
    assert summary[1]["privacy"]["delta"] == 1e-5
    assert summary[1]["privacy"]["epsilon_budget"] == 50.0
    # The same figures as the rounds API (issue 21), and in the page's one answer.
    full = fed.rounds(exp)
    for mine, theirs in zip(summary, full, strict=True):
        assert mine["privacy"]["epsilon_total"] == theirs["privacy"]["epsilon_total"]
    page = client_get(fed, f"/dashboard/experiments/{exp}/page")
    assert page["rounds"] == summary and page["experiment"]["id"] == exp
    assert page["series"] == client_get(fed, f"/dashboard/experiments/{exp}/series")
    assert page["experiment"]["config"]["privacy"]["dp"]["noise_multiplier"] == 2.0
    # Without DP there is nothing to report.
    fed.start(plain)
    services.orchestrator.step()
    for name in fed.sites:
        task = fed.next_task(name)
        if task is not None and task["experiment_id"] == plain:
            assert fed.train_and_upload(name, task).status_code == 200
    services.orchestrator.step()
    assert all(
        r["privacy"] is None for r in client_get(fed, f"/dashboard/experiments/{plain}/rounds")
    )


def client_get(fed: Federation, path: str) -> Any:
    r = fed.client.get(f"{API}{path}", headers=fed.rh)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize(("z", "q"), [(2.0, 1.0), (1.1, 0.25)])
def test_epsilons_in_one_pass_match_the_accountant_round_by_round(z: float, q: float) -> None:
    from data_specs.privacy.accountant import epsilons

    series = epsilons(z, q, 40, 1e-5)
    assert len(series) == 40 and epsilons(z, q, 0, 1e-5) == ()
    for n in (1, 2, 3, 17, 40):
        assert series[n - 1] == pytest.approx(epsilon(z, q, n, 1e-5), rel=1e-12)
    assert all(a < b for a, b in itertools.pairwise(series))
