"""The garbage collector's pauses on ``/metrics``: timed while the app runs, and only then."""

from __future__ import annotations

import gc
import re

from fastapi.testclient import TestClient

from aggregator.api.app import create_app
from aggregator.settings import AggregatorSettings
from aggregator.telemetry import GcPauses


def _metric(text: str, name: str, generation: int) -> float:
    found = re.search(rf'^{name}\{{generation="{generation}"\}} (\S+)$', text, re.MULTILINE)
    assert found is not None, f"{name} for generation {generation} missing from /metrics"
    return float(found.group(1))


def test_a_full_collection_is_counted_and_timed_while_installed() -> None:
    pauses = GcPauses()
    pauses.install()
    pauses.install()  # twice: still one hook
    try:
        assert gc.callbacks.count(pauses) == 1
        gc.collect()
        assert pauses.collections[2] == 1
        assert pauses.seconds[2] > 0
        assert 0 < pauses.longest[2] <= pauses.seconds[2]
    finally:
        pauses.remove()
    assert pauses not in gc.callbacks
    gc.collect()
    assert pauses.collections[2] == 1  # removed: no longer counted
    pauses.remove()  # safe when not installed


def test_a_young_collection_counts_under_its_own_generation() -> None:
    pauses = GcPauses()
    pauses.install()
    try:
        gc.collect(0)
    finally:
        pauses.remove()
    assert pauses.collections == [1, 0, 0]
    assert pauses.seconds[0] > 0 and pauses.seconds[1] == pauses.seconds[2] == 0


def test_metrics_show_the_pauses_of_the_running_app(client: TestClient) -> None:
    pauses = client.app.state.services.metrics.gc_pauses  # type: ignore[attr-defined]
    assert pauses in gc.callbacks  # the lifespan installed it
    before = _metric(client.get("/metrics").text, "fedseg_gc_collections_total", 2)
    gc.collect()
    text = client.get("/metrics").text
    assert _metric(text, "fedseg_gc_collections_total", 2) == before + 1
    assert _metric(text, "fedseg_gc_pause_seconds_total", 2) > 0
    assert _metric(text, "fedseg_gc_longest_pause_seconds", 2) > 0
    assert _metric(text, "fedseg_gc_collections_total", 0) >= 0


def test_the_app_stops_timing_when_it_stops(settings: AggregatorSettings) -> None:
    app = create_app(settings)
    pauses = app.state.services.metrics.gc_pauses
    assert pauses not in gc.callbacks  # built, not started
    with TestClient(app):
        assert pauses in gc.callbacks
    assert pauses not in gc.callbacks  # the lifespan ended as at shutdown
