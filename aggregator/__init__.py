"""Aggregator: the FastAPI service that runs federated rounds.

``create_app(settings)`` builds the app; ``fedseg aggregator serve`` (or ``python -m aggregator
serve``) runs it under uvicorn. Importing this package stays cheap: the web stack loads on first
use of ``create_app`` or ``AggregatorSettings``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aggregator.api.app import create_app
    from aggregator.settings import AggregatorSettings

__all__ = ["AggregatorSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from aggregator.api.app import create_app

        return create_app
    if name == "AggregatorSettings":
        from aggregator.settings import AggregatorSettings

        return AggregatorSettings
    raise AttributeError(f"module 'aggregator' has no attribute {name!r}")
