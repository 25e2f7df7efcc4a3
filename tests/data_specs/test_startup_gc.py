"""The start-up pause of the cyclic garbage collector: off while starting, frozen and back on after."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from data_specs import startup_gc


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    startup_gc.resume()
    gc.unfreeze()
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


def test_resume_leaves_a_collector_that_someone_else_switched_off_alone() -> None:
    gc.disable()
    startup_gc.pause()  # already off: not ours to switch back on
    startup_gc.resume()
    assert not gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_resume_without_pause_changes_nothing() -> None:
    gc.enable()
    gc.unfreeze()
    startup_gc.resume()
    assert gc.isenabled() and gc.get_freeze_count() == 0
