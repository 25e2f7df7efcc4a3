"""What a started experiment's requests keep asking for, read and validated once per process.

Every poll that hands out a task and every upload needs the experiment's configuration (to build
the assignment, or the upload's policy): its spec hash, expected tensor layout, local keys and
the validated ``ExperimentCreate``. Loading the experiment row decodes its JSON columns (the
config lists every site: O(sites) per request) and validating the config costs as much again;
at a thousand sites that made each request's cost grow with the federation.

Those facts do not change once an experiment has started (``apply_auto_plan`` rewrites the
config in the transaction that starts it, never after), so ``experiment_facts`` keeps them per
``(experiment id, started_at)``; an experiment that has not started is always read afresh.
The experiment's *status* is not a fact: callers read it (or the round's) from the database on
every request.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.crud.experiments import config_of, expected_of, get_experiment
from aggregator.storage.db.models import Experiment
from data_specs.researcher.experiments import ExperimentCreate
from data_specs.weights.safetensors_header import TensorLayout

_MAX_ENTRIES = 64


@dataclass(frozen=True)
class ExperimentFacts:
    """A started experiment's fixed facts.

    Attributes:
        id: the experiment's id.
        spec_hash: its task spec's hash.
        cfg: its validated configuration.
        expected: ``{key: (shape, dtype)}`` its bundles must match.
        local_keys: keys never averaged.
    """

    id: str
    spec_hash: str
    cfg: ExperimentCreate
    expected: TensorLayout
    local_keys: tuple[str, ...]


_cache: OrderedDict[tuple[str, datetime], ExperimentFacts] = OrderedDict()
_lock = threading.Lock()


def experiment_facts(
    session: Session, *, experiment_id: str, started_at: datetime | None = None
) -> ExperimentFacts:
    """The experiment's facts, from memory when it has started.

    Args:
        session: the open session.
        experiment_id: the experiment.
        started_at: its ``started_at`` when the caller has read it already (saves a query).

    Raises:
        NotFoundError: no such experiment.
    """
    if started_at is None:
        started_at = session.scalar(
            select(Experiment.started_at).where(Experiment.id == experiment_id)
        )
    found = cached_facts(experiment_id=experiment_id, started_at=started_at)
    if found is not None:
        return found
    experiment = get_experiment(session, experiment_id=experiment_id)
    facts = ExperimentFacts(
        id=experiment.id,
        spec_hash=experiment.spec_hash,
        cfg=config_of(experiment),
        expected=expected_of(experiment),
        local_keys=tuple(experiment.local_keys),
    )
    if experiment.started_at is not None:
        with _lock:
            _cache[(experiment.id, experiment.started_at)] = facts
            while len(_cache) > _MAX_ENTRIES:
                _cache.popitem(last=False)
    return facts


def cached_facts(*, experiment_id: str, started_at: datetime | None) -> ExperimentFacts | None:
    """A started experiment's facts if this process holds them (no database read), else None."""
    return None if started_at is None else _cache.get((experiment_id, started_at))


def forget_all() -> None:
    """Empty the cache (tests)."""
    with _lock:
        _cache.clear()
