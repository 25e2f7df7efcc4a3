"""Request and response schemas of the REST API (``XCreate`` in, ``XPublic`` out)."""

from __future__ import annotations

from aggregator.schemas.events import EventPublic
from aggregator.schemas.experiments import (
    ExperimentCreate,
    ExperimentPublic,
    GrantCreate,
    GrantPublic,
    StrategyConfig,
)
from aggregator.schemas.principals import (
    ResearcherCreate,
    ResearcherCreated,
    SiteCreate,
    SitePublic,
    SiteRegistered,
)
from aggregator.schemas.rounds import RoundPublic, SiteRoundPublic, TaskStatusPublic

__all__ = [
    "EventPublic",
    "ExperimentCreate",
    "ExperimentPublic",
    "GrantCreate",
    "GrantPublic",
    "ResearcherCreate",
    "ResearcherCreated",
    "RoundPublic",
    "SiteCreate",
    "SitePublic",
    "SiteRegistered",
    "SiteRoundPublic",
    "StrategyConfig",
    "TaskStatusPublic",
]
