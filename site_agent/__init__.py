"""Site agent: local training, the federated client loop and inference, on the hospital side.

The public surface (imported on first use, so ``fedseg --help`` stays fast)::

    from site_agent import SiteAgent, SiteSettings
    agent = SiteAgent(SiteSettings.load(aggregator_url=..., manifest=..., work_dir=...))
    agent.run(max_tasks=3)          # or run(once=True); agent.stop_event.set() from another thread
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from site_agent.clinic.adapt import adapt_experiment
    from site_agent.clinic.inference import Segmentation, segment_scan, write_segmentation
    from site_agent.clinic.models import load_model
    from site_agent.federation.client import AggregatorClient, make_http_client
    from site_agent.federation.loop import RunSummary, SiteAgent
    from site_agent.federation.privacy import OutboundGuard
    from site_agent.federation.task_runner import TaskOutcome
    from site_agent.settings import SiteSettings
    from site_agent.training.trainer import SiteTrainer, TrainResult

_LAZY = {
    "adapt_experiment": "clinic.adapt",
    "AggregatorClient": "federation.client",
    "make_http_client": "federation.client",
    "Segmentation": "clinic.inference",
    "segment_scan": "clinic.inference",
    "write_segmentation": "clinic.inference",
    "RunSummary": "federation.loop",
    "SiteAgent": "federation.loop",
    "load_model": "clinic.models",
    "OutboundGuard": "federation.privacy",
    "SiteSettings": "settings",
    "TaskOutcome": "federation.task_runner",
    "SiteTrainer": "training.trainer",
    "TrainResult": "training.trainer",
}

__all__ = [
    "AggregatorClient",
    "OutboundGuard",
    "RunSummary",
    "Segmentation",
    "SiteAgent",
    "SiteSettings",
    "SiteTrainer",
    "TaskOutcome",
    "TrainResult",
    "adapt_experiment",
    "load_model",
    "make_http_client",
    "segment_scan",
    "write_segmentation",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"site_agent.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
