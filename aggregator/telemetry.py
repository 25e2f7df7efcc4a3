"""Prometheus metrics of one aggregator app (its own registry, so several apps can share a process)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE_LATEST", "AggregatorMetrics"]


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
