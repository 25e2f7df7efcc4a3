"""The start-up pause of the cyclic garbage collector: off while starting, frozen and back on after."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from data_specs import startup_gc


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    thresholds = gc.get_threshold()
    yield
    startup_gc.resume()
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_pause_switches_the_collector_off_and_resume_freezes_then_switches_it_on() -> None:
    gc.enable()
    gc.unfreeze()
    startup_gc.pause()
    assert not gc.isenabled() and startup_gc.paused()
    made_while_starting = [object() for _ in range(10)]
    startup_gc.resume()
    assert gc.isenabled() and not startup_gc.paused()
    assert gc.get_freeze_count() >= len(made_while_starting)  # later collections skip them
    assert gc.get_threshold() == startup_gc.SERVICE_THRESHOLDS


def test_service_thresholds_make_young_collections_rarer_than_pythons() -> None:
    young, middle, full = startup_gc.SERVICE_THRESHOLDS
    assert young > 700 and middle >= 10 and full >= 10  # Python's defaults: (700, 10, 10)


def test_resume_leaves_a_collector_that_someone_else_switched_off_alone() -> None:
    gc.disable()
    gc.set_threshold(123, 4, 5)
    startup_gc.pause()  # already off: not ours to switch back on
    startup_gc.resume()
    assert not gc.isenabled()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == (123, 4, 5)


def test_resume_without_pause_changes_nothing() -> None:
    gc.enable()
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    startup_gc.resume()
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert gc.get_threshold() == (700, 10, 10)
