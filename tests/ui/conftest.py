"""Fixtures of the browser tier: headless Debian Chromium driven by Selenium, screenshots kept.

If Chromium, its driver or Selenium is missing, or the browser does not start, every test of
the tier skips with a loud reason (``.ci/run`` installs ``chromium`` and ``chromium-driver``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# Screenshots land here (CI keeps the folder as the run's artefacts).
ARTEFACTS = Path(os.environ.get("FEDSEG_TEST_ARTEFACTS", REPO / "test-artefacts")) / "ui"

CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # we run as root in CI containers
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1400",
)


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def _skip(reason: str) -> None:
    message = f"BROWSER TIER SKIPPED: {reason}"
    print(f"\n{'!' * 20}\n{message}\n{'!' * 20}")
    pytest.skip(message)


@pytest.fixture(scope="session")
def chrome_paths() -> tuple[str, str]:
    """The chromium binary and its driver, or a loud skip."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        _skip("selenium is not installed (pip install -e '.[test]')")
    browser = _find("chromium", "chromium-browser")
    driver = _find("chromedriver", "chromium-driver")
    if browser is None or driver is None:
        _skip(
            "Debian's chromium and chromium-driver are not installed "
            "(apt-get install chromium chromium-driver; .ci/run does this)"
        )
    assert browser is not None and driver is not None
    return browser, driver


@pytest.fixture
def browser(chrome_paths: tuple[str, str]) -> Iterator[Any]:
    """A fresh headless Chromium (own user-data-dir), quit after the test."""
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chrome_paths
    profile = tempfile.mkdtemp(prefix="fedseg-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROME_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    except WebDriverException as exc:
        shutil.rmtree(profile, ignore_errors=True)
        _skip(f"headless chromium did not start: {str(exc).splitlines()[0]}")
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver: Any, name: str) -> Path:
    """Save a full-window PNG under the artefacts folder; returns its path."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 1000, f"screenshot {path} is empty"
    return path
