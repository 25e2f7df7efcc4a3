"""Long polls are woken as soon as the next round is committed, not after the whole step.

After closing a round and opening the next, the orchestrator's step goes on (another pass over
the experiment, other experiments); the sites of the new round used to wait for all of it
(issue 19: from round open to the first site holding its task).
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from aggregator.api.deps import Services
from aggregator.rounds.orchestrator import Orchestrator
from aggregator.rounds.task_board import TaskBoard
from tests.aggregator.helpers import Federation


def test_sites_are_woken_while_the_step_goes_on(
    fed: Federation, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = fed.create_experiment(rounds=2, min_sites=3)
    fed.start(exp)
    orchestrator: Orchestrator = services.orchestrator
    real = Orchestrator._advance_once
    opened = threading.Event()
    release = threading.Event()

    def advance_once(self: Orchestrator, experiment_id: str) -> tuple[bool, set[str]]:
        if opened.is_set():  # the pass after the round was opened: the step is still busy
            release.wait(10)
        changed, sites = real(self, experiment_id)
        if sites:
            opened.set()
        return changed, sites

    monkeypatch.setattr(Orchestrator, "_advance_once", advance_once)
    site_ids = [site_id for site_id, _ in fed.sites.values()]

    async def scenario() -> bool:
        board = TaskBoard()
        board.bind(asyncio.get_running_loop())
        waiters = [board.waiter(site_id) for site_id in site_ids]
        loop_task = asyncio.create_task(orchestrator.run(board))
        orchestrator.wake()
        try:
            await asyncio.wait_for(asyncio.gather(*waiters), 5)
            woken = True
        except TimeoutError:
            woken = False
        release.set()
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
        return woken

    assert asyncio.run(scenario())
    assert opened.is_set()
    assert fed.rounds(exp)[0]["status"] == "open"
