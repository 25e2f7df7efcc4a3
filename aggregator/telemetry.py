"""Prometheus metrics of one aggregator app (its own registry, so several apps can share a process)."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "AggregatorMetrics", "GcPauses"]

GENERATIONS = 3


class GcPauses(Collector):
    """How long Python's cyclic garbage collector held the process, by generation.

    A collection holds the GIL, so it stops every thread of the aggregator, the event loop that
    answers the sites among them. With Python's default thresholds a full one took up to a tenth
    of a second at a thousand sites (``benchmarks/results/scale.md``, section S). ``install`` adds a ``gc.callbacks`` entry and
    ``remove`` takes it out again (the app's lifespan does both). Exposed as
    ``fedseg_gc_pause_seconds_total``, ``fedseg_gc_collections_total`` and
    ``fedseg_gc_longest_pause_seconds``, each by ``generation`` (0, 1, 2).

    Example::

        pauses = GcPauses()
        pauses.install()
        gc.collect()
        pauses.seconds[2]  # > 0
        pauses.remove()
    """

    def __init__(self) -> None:
        self.seconds = [0.0] * GENERATIONS
        self.collections = [0] * GENERATIONS
        self.longest = [0.0] * GENERATIONS
        self._started: float | None = None

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        """The ``gc.callbacks`` hook: ``start`` and ``stop`` of each collection."""
        if phase == "start":
            self._started = time.perf_counter()
            return
        started, self._started = self._started, None
        if started is None:  # installed during a collection
            return
        pause = time.perf_counter() - started
        generation = min(int(info.get("generation", GENERATIONS - 1)), GENERATIONS - 1)
        self.seconds[generation] += pause
        self.collections[generation] += 1
        self.longest[generation] = max(self.longest[generation], pause)

    def install(self) -> None:
        """Start timing collections (once; a second call changes nothing)."""
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        """Stop timing collections (safe to call when not installed)."""
        while self in gc.callbacks:
            gc.callbacks.remove(self)

    def collect(self) -> Iterator[Metric]:
        """The three metric families, for a ``CollectorRegistry``."""
        seconds = CounterMetricFamily(
            "fedseg_gc_pause_seconds",
            "Time the cyclic garbage collector held the process, by generation",
            labels=["generation"],
        )
        count = CounterMetricFamily(
            "fedseg_gc_collections",
            "Cyclic garbage collections, by generation",
            labels=["generation"],
        )
        longest = GaugeMetricFamily(
            "fedseg_gc_longest_pause_seconds",
            "Longest single collection since start, by generation",
            labels=["generation"],
        )
        for generation in range(GENERATIONS):
            label = [str(generation)]
            seconds.add_metric(label, self.seconds[generation])
            count.add_metric(label, self.collections[generation])
            longest.add_metric(label, self.longest[generation])
        yield from (seconds, count, longest)


class AggregatorMetrics:
    """Counters, gauges and histograms exposed on ``/metrics``.

    Attributes:
        rounds: rounds ended, by outcome (``closed``, ``retried``, ``failed``).
        bytes_in: bytes received, by kind (``update``, ``personal``, ``initial_model``).
        bytes_out: bytes sent, by kind (``task_model``, ``round_model``, ``routing_bundle``).
        updates: uploads that changed state, by outcome (``accepted``, ``rejected``, ``duplicate``).
        rejects: uploads refused or rejected, by reason code.
        aggregation_seconds: wall time of one round's aggregation.
        active_experiments: experiments currently running.
        long_polls_waiting: ``GET /tasks/next`` requests waiting for a task now.
        gc_pauses: the garbage collector's pauses (``GcPauses``; timed while installed).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.rounds = Counter(
            "fedseg_rounds", "Round attempts ended, by outcome", ["outcome"], registry=self.registry
        )
        self.bytes_in = Counter(
            "fedseg_bytes_received", "Bundle bytes received", ["kind"], registry=self.registry
        )
        self.bytes_out = Counter(
            "fedseg_bytes_sent", "Bundle bytes sent", ["kind"], registry=self.registry
        )
        # Per site (a bounded label: the federation's hospitals); per round lives in the rounds API.
        self.site_bytes_up = Counter(
            "fedseg_site_bytes_up",
            "Update bytes received from each site",
            ["site"],
            registry=self.registry,
        )
        self.site_bytes_down = Counter(
            "fedseg_site_bytes_down",
            "Global-model bytes sent to each site",
            ["site"],
            registry=self.registry,
        )
        self.updates = Counter(
            "fedseg_updates",
            "Site uploads recorded, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.rejects = Counter(
            "fedseg_update_rejects",
            "Uploads refused or rejected, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.aggregation_seconds = Histogram(
            "fedseg_aggregation_seconds",
            "Wall time of one round's aggregation",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
            registry=self.registry,
        )
        self.active_experiments = Gauge(
            "fedseg_active_experiments", "Experiments in status running", registry=self.registry
        )
        self.long_polls_waiting = Gauge(
            "fedseg_long_polls_waiting",
            "Sites' long polls (GET /tasks/next) waiting for a task now",
            registry=self.registry,
        )
        self.gc_pauses = GcPauses()
        self.registry.register(self.gc_pauses)

    def render(self, *, with_sites: bool = True) -> bytes:
        """The text exposition format; without ``with_sites`` no line names a hospital."""
        text = generate_latest(self.registry)
        if with_sites:
            return text
        return b"".join(
            line
            for line in text.splitlines(keepends=True)
            if not line.startswith(
                (b"fedseg_site_", b"# HELP fedseg_site_", b"# TYPE fedseg_site_")
            )
        )
