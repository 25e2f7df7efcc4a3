"""Request and response schemas of the REST API (``XCreate`` in, ``XPublic`` out)."""

from __future__ import annotations

from data_specs.researcher.events import EventPublic
from data_specs.researcher.experiments import (
    ExperimentCreate,
    ExperimentPublic,
    GrantCreate,
    GrantPublic,
    StrategyConfig,
)
from data_specs.researcher.principals import (
    ResearcherCreate,
    ResearcherCreated,
    SiteCreate,
    SitePublic,
    SiteRegistered,
)
from data_specs.researcher.rounds import RoundPublic, SiteRoundPublic, TaskStatusPublic

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
