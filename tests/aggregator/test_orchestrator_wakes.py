"""A burst of wake-ups (one per upload) costs the orchestrator one step, not one each."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from aggregator.api.deps import Services
from aggregator.rounds.orchestrator import Orchestrator
from aggregator.rounds.task_board import TaskBoard


def steps_for_spaced_wakes(services: Services, *, settle_s: float, wakes: int) -> int:
    """Steps ``run`` makes for ``wakes`` wake-ups 20 ms apart, then for one more 1 s later."""
    orchestrator = Orchestrator(
        database=services.database,
        blobs=services.blobs,
        metrics=services.metrics,
        interval_s=3600.0,  # no timer steps during the test
        wake_settle_s=settle_s,
    )
    steps: list[int] = []

    def step() -> set[str]:
        steps.append(1)
        return set()

    orchestrator.step = step  # type: ignore[method-assign]

    async def drive() -> int:
        loop_task = asyncio.create_task(orchestrator.run(TaskBoard()))
        await asyncio.sleep(0.05)  # run() is waiting
        for _ in range(wakes):
            orchestrator.wake()
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)
        burst = len(steps)
        orchestrator.wake()  # a later wake-up still gets its own step
        await asyncio.sleep(1.0)
        assert len(steps) == burst + 1
        loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop_task
        return burst

    return asyncio.run(drive())


@pytest.mark.slow  # real sleeps, about 2 s
def test_wake_ups_within_the_settle_time_share_one_step(services: Services) -> None:
    assert steps_for_spaced_wakes(services, settle_s=0.5, wakes=6) == 1


@pytest.mark.slow
def test_without_settling_each_spaced_wake_up_is_a_step(services: Services) -> None:
    # What every upload cost before (issue 20: ~2 ms of CPU per upload in sequence).
    assert steps_for_spaced_wakes(services, settle_s=0.0, wakes=8) >= 4
