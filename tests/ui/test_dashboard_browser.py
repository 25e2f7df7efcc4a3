"""The dashboard in a real browser: headless Chromium against a live aggregator and running sites."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from data_specs.privacy.accountant import epsilon
from tests.aggregator.helpers import bearer
from tests.ui.conftest import ARTEFACTS, screenshot
from tests.ui.live_federation import LiveFederation, live_federation, seed_history

pytestmark = pytest.mark.slow

SITES = ["hospital-a", "hospital-b", "hospital-c"]
DP = {"clip_norm": 100.0, "noise_multiplier": 1.5, "delta": 1e-5, "epsilon_budget": 1000.0}


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[LiveFederation]:
    with live_federation(tmp_path / "agg", SITES) as federation:
        yield federation


def wait_for(driver: Any, css: str, timeout: float = 60) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, css))
    )


def wait_until(predicate: Any, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def text_of(driver: Any, css: str, timeout: float = 60) -> str:
    """The text of an element, re-finding it when a live update replaced it meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            return str(wait_for(driver, css, timeout).text)
        except StaleElementReferenceException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def sign_in(driver: Any, url: str, token: str) -> None:
    driver.get(f"{url}/ui/")
    field = wait_for(driver, "#token")
    field.send_keys(token)
    driver.find_element("css selector", "#login-form button[type=submit]").click()


def test_wrong_token_is_refused(browser: Any, fed: LiveFederation) -> None:
    sign_in(browser, fed.url, "not-a-real-token")
    error = wait_for(browser, "#login-error")
    wait_until(lambda: "refused" in error.text, what="the refusal message")
    assert "401" in error.text
    assert browser.find_element("css selector", "#login").is_displayed()
    assert browser.find_element("css selector", "#view").text == ""
    assert browser.execute_script("return sessionStorage.getItem('fedseg.token')") is None
    screenshot(browser, "wrong-token")


def test_pages_render_and_curves_show_the_rounds(browser: Any, fed: LiveFederation) -> None:
    from selenium.webdriver.common.keys import Keys

    exp_id = fed.create_experiment("acdc-tiny", rounds=3, privacy={"dp": DP})
    fed.start(exp_id)
    fed.wait_status(exp_id, "completed")
    # Consent (issue 15) for the Sites page: an experiment awaiting its start, which the sites'
    # standing policy (accept_experiments: "*") approves and hospital-c declines explicitly.
    waiting = fed.create_experiment("awaiting-start", rounds=2)
    assert fed.http is not None
    declined = fed.http.post(
        f"/api/v1/invitations/{waiting}/decline",
        headers={"Authorization": f"Bearer {fed.site_tokens['hospital-c']}"},
    )
    assert declined.status_code == 200, declined.text
    assert fed.http.post(
        "/api/v1/sites", json={"name": "hospital-new"}, headers=bearer(fed.researcher_token)
    ).is_success
    sign_in(browser, fed.url, fed.researcher_token)

    row_css = f'tr[data-experiment="{exp_id}"]'
    cells = [text_of(browser, f"{row_css} td:nth-child({i})") for i in range(1, 5)]
    assert cells[0] == "acdc-tiny" and cells[1] == "completed" and cells[2] == "3 / 3"
    best = float(cells[3])  # best mean Dice of the rounds: round 3's mean of the sites' figures
    assert best == pytest.approx((0.71 + 0.79 + 0.87) / 3, abs=1e-3)
    screenshot(browser, "experiments")

    # Keyboard: tab to the experiment's link and press Enter.
    wait_for(browser, f"{row_css} a").send_keys(Keys.ENTER)
    wait_for(browser, "#curves")
    curves = browser.find_elements("css selector", "#curves path.curve")
    kinds = {(c.get_attribute("data-site"), c.get_attribute("data-kind")) for c in curves}
    for site in SITES:
        for kind in ("val_dice", "val_dice_global", "val_dice_personal", "train_loss"):
            assert (site, kind) in kinds
    assert {c.get_attribute("data-points") for c in curves} == {"3"}
    label = browser.find_element("css selector", "#curves").get_attribute("aria-label")
    assert (
        "3 sites over 3 rounds" in label
        and "hospital-a Dice 0.710, global 0.650, personal 0.750" in label
    )
    rounds = browser.find_elements("css selector", "#rounds > table > tbody > tr")
    assert len(rounds) == 3
    assert "3 / 3" in rounds[0].text and "closed" in rounds[0].text
    # Per-site detail of a round opens on demand, with status, samples and bytes.
    rounds[-1].find_element("css selector", "summary").click()
    detail = text_of(browser, "#rounds details[open] table")
    assert "hospital-b" in detail and "accepted" in detail and "15" in detail
    wait_for(browser, "#timeline-svg")
    timeline = browser.find_element("css selector", "#timeline-svg").get_attribute("aria-label")
    assert "Timeline of round 3" in timeline and "hospital-c: accepted" in timeline
    config = browser.find_element("css selector", "#config").text
    assert json.loads(config)["strategy"]["name"] == "fedavg"
    # Differential privacy: ε in total after round 3 and of one round, as the accountant says
    # (every participant sampled: q = 1), and per round in the table.
    eps = [epsilon(DP["noise_multiplier"], 1.0, n, DP["delta"]) for n in (1, 2, 3)]
    assert float(text_of(browser, "#epsilon-total")) == pytest.approx(eps[2], abs=0.01)
    assert float(text_of(browser, "#epsilon-round")) == pytest.approx(eps[0], abs=1e-3)
    assert "of a budget of 1000" in text_of(browser, "#privacy-text")
    totals = [float(c.text) for c in browser.find_elements("css selector", "#rounds td.eps-total")]
    assert totals == pytest.approx(eps[::-1], abs=1e-3)  # newest first
    headers = text_of(browser, "#rounds > table > thead")
    assert "ε (round)" in headers and "ε (total)" in headers
    browser.execute_script("window.scrollTo(0, 0)")
    screenshot(browser, "experiment-top")
    screenshot(browser, "experiment")

    browser.find_element("css selector", 'a[data-nav="sites"]').click()
    sites_text = text_of(browser, "#view table")
    for site in SITES:
        assert site in sites_text
    assert sites_text.count("enrolled") >= len(SITES)
    approvals = {
        site: text_of(browser, f'tr[data-site="{fed.sites[site]}"] td.approvals') for site in SITES
    }
    assert approvals["hospital-a"] == "awaiting-start (created): approved by its standing policy"
    assert approvals["hospital-c"] == "awaiting-start (created): declined by the site"
    assert "acdc-tiny" not in sites_text  # ended experiments leave the page
    policy = text_of(browser, f'tr[data-site="{fed.sites["hospital-a"]}"] td.policy')
    assert policy == "every experiment"
    new_row = next(
        r
        for r in browser.find_elements("css selector", "#view tbody tr")
        if "hospital-new" in r.text
    )
    assert "awaiting-start (created): pending" in new_row.text
    assert "none: approves one by one" in new_row.text
    # Keyboard: the approval links open the experiment they name.
    link = browser.find_element(
        "css selector", f'tr[data-site="{fed.sites["hospital-a"]}"] td.approvals a'
    )
    assert link.get_attribute("href").endswith(f"#/experiments/{waiting}")
    screenshot(browser, "sites")

    browser.find_element("css selector", 'a[data-nav="audit"]').click()
    wait_until(lambda: "Audit log" in browser.find_element("css selector", "#view").text)
    audit = text_of(browser, "#view table")
    for kind in (
        "experiment.created",
        "experiment.started",
        "round.closed",
        "experiment.completed",
    ):
        assert kind in audit
    screenshot(browser, "audit")


def test_started_experiment_appears_live(browser: Any, fed: LiveFederation) -> None:
    sign_in(browser, fed.url, fed.researcher_token)
    wait_for(browser, "#view h2")
    assert "No experiments yet" in browser.find_element("css selector", "#view").text
    exp_id = fed.create_experiment("live-one", rounds=40)
    fed.start(exp_id)
    # No reload: the page polls and the new, running experiment appears.
    row_css = f'tr[data-experiment="{exp_id}"]'
    wait_until(
        lambda: "running" in text_of(browser, row_css, timeout=60),
        timeout=60,
        what="the started experiment listed as running",
    )
    wait_for(browser, f"{row_css} a").click()
    wait_for(browser, "#curves", timeout=60)
    points = "return Number(document.querySelector('#curves path.curve').dataset.points)"
    first = browser.execute_script(points)
    wait_until(
        lambda: browser.execute_script(points) > first,
        timeout=90,
        what="a new round on the curves without a reload",
    )
    status = text_of(browser, "#exp-status")
    assert "running" in status or "completed" in status
    screenshot(browser, "experiment-live")


def test_first_paint_with_200_rounds_of_20_sites(browser: Any, fed: LiveFederation) -> None:
    from benchmarks.dashboard_paint_bench import measure_loads

    exp_id = seed_history(fed, rounds=200, sites=20)
    samples = measure_loads(browser, fed.url, fed.researcher_token, exp_id, loads=5)
    timings = [s["first_paint_ms"] for s in samples]
    assert {s["curves"] for s in samples} == {20 * 4}  # update, global, personal Dice; loss
    assert {s["round_rows"] for s in samples} == {50}  # the newest page of the rounds table
    curves = browser.find_elements("css selector", "#curves path.curve")
    assert {c.get_attribute("data-points") for c in curves} == {"200"}
    rows = "return document.querySelectorAll('#rounds > table > tbody > tr').length"
    first_row = "#rounds > table > tbody > tr:first-child td:first-child"
    assert text_of(browser, first_row) == "200"
    # Older rounds page in on demand, by keyboard too (the button keeps the focus).
    from selenium.webdriver.common.keys import Keys

    wait_for(browser, "#more-rounds").send_keys(Keys.ENTER)
    wait_until(lambda: browser.execute_script(rows) == 100, what="100 rows after one page more")
    assert browser.switch_to.active_element.get_attribute("id") == "more-rounds"
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    (ARTEFACTS / "first_paint.json").write_text(
        json.dumps(
            {
                "rounds": 200,
                "sites": 20,
                "first_paint_ms": timings,
                "median_ms": sorted(timings)[len(timings) // 2],
                "load_average": os.getloadavg(),
                "samples": samples,
            },
            indent=2,
        )
    )
    screenshot(browser, "experiment-200x20")
    # The best of five loads: what the page costs; the others add whatever else the machine
    # was doing (all five are in the artefact). benchmarks/dashboard_paint_bench.py measures
    # the same outside pytest and records it with the load average.
    best = min(timings)
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if best > 1000.0 and load > 2 * cores:
        pytest.skip(
            f"FIRST PAINT NOT JUDGED: the machine is saturated (load average {load:.1f} on "
            f"{cores} cores); measured {[round(t) for t in timings]} ms"
        )
    assert best <= 1000.0, f"first paint over 1 s in every load: {timings} ms"
