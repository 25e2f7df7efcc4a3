"""Schemas of consent: what a site is shown before it approves an experiment."""

from __future__ import annotations

from pydantic import BaseModel

from data_specs.task_spec import TaskSpec
from data_specs.wire import ConsentPolicy

__all__ = ["ConsentPolicy", "InvitationPublic"]


class InvitationPublic(BaseModel):
    """An experiment that may sample the site, as the hospital sees it before approving.

    Args:
        experiment_id: the experiment.
        name: its display name.
        researcher: who created it.
        status: ``created`` (decision open) or ``running``.
        decision: ``pending``, ``approved`` or ``declined``.
        spec: the network and task it trains.
        rounds: federated rounds.
        min_sites: fewest approved sites it needs to start.
        local_epochs: local passes per round.
        max_steps: cap on optimiser steps per round (None: whole epochs).
        codec: update compression.
        update_kind: ``full`` weights or ``diff`` sent per round.
        personalization: inside personalisation method.
        personal_models_shared_with_researcher: a site that shares its personal model
            (``share_personal``) hands it to the experiment's researcher and granted sites.
        strategy: server aggregation rule.
    """

    experiment_id: str
    name: str
    researcher: str
    status: str
    decision: str
    spec: TaskSpec
    rounds: int
    min_sites: int
    local_epochs: int
    max_steps: int | None
    codec: str
    update_kind: str
    personalization: str
    personal_models_shared_with_researcher: bool
    strategy: str
