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
    from site_agent.adapt import adapt_experiment
    from site_agent.client import AggregatorClient, make_http_client
    from site_agent.inference import Segmentation, segment_scan, write_segmentation
    from site_agent.loop import RunSummary, SiteAgent
    from site_agent.models import load_model
    from site_agent.privacy import OutboundGuard
    from site_agent.settings import SiteSettings
    from site_agent.task_runner import TaskOutcome
    from site_agent.trainer import SiteTrainer, TrainResult

_LAZY = {
    "adapt_experiment": "adapt",
    "AggregatorClient": "client",
    "make_http_client": "client",
    "Segmentation": "inference",
    "segment_scan": "inference",
    "write_segmentation": "inference",
    "RunSummary": "loop",
    "SiteAgent": "loop",
    "load_model": "models",
    "OutboundGuard": "privacy",
    "SiteSettings": "settings",
    "TaskOutcome": "task_runner",
    "SiteTrainer": "trainer",
    "TrainResult": "trainer",
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
