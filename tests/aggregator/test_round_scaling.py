"""A wake-up of the orchestrator costs O(1) rows, not the round's N tasks.

Every accepted upload wakes the orchestrator. When each wake-up loaded the round's tasks to see
whether any was still pending, a round of N sites cost O(N²) (issue 20's scale benchmark); now
the database counts them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from aggregator.api.deps import Services
from aggregator.storage.db import Task
from tests.aggregator.helpers import Federation


@contextmanager
def counting_task_loads() -> Iterator[list[int]]:
    """Counts ``Task`` rows turned into ORM objects while the block runs."""
    loads = [0]

    def on_load(target: Any, context: Any) -> None:
        loads[0] += 1

    event.listen(Task, "load", on_load)
    try:
        yield loads
    finally:
        event.remove(Task, "load", on_load)


def test_a_wake_up_during_an_open_round_loads_no_task_rows(
    fed: Federation, services: Services
) -> None:
    exp = fed.create_experiment(rounds=1, min_sites=3)
    fed.start(exp)
    services.orchestrator.step()
    tasks = {name: fed.next_task(name) for name in ("site-a", "site-b")}
    for name, task in tasks.items():
        assert task is not None
        assert fed.train_and_upload(name, task).status_code == 200
    with counting_task_loads() as loads:
        services.orchestrator.step()  # site-c still training: the round waits
    assert fed.rounds(exp)[0]["status"] == "open"
    assert loads[0] == 0
    task_c = fed.next_task("site-c")
    assert task_c is not None and fed.train_and_upload("site-c", task_c).status_code == 200
    services.orchestrator.step()
    assert fed.rounds(exp)[0]["status"] == "closed"  # the count still sees the last report
