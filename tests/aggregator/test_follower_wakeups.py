"""A follower process wakes its waiting sites every tick only while it cannot hear the leader
announce new tasks; while it can, only every ``FOLLOWER_SAFETY_TICKS`` ticks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

import pytest

from aggregator.leadership import FOLLOWER_SAFETY_TICKS, lead_rounds
from aggregator.rounds.task_board import TaskBoard


class Follower:
    """A contested leadership never won; stops the loop after ``ticks`` tries."""

    contested = True
    is_leader = False

    def __init__(self, ticks: int, done: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
        self.left, self.done, self.loop = ticks, done, loop

    def hold(self) -> bool:
        self.left -= 1
        if self.left == 0:
            self.loop.call_soon_threadsafe(self.done.set)
        return False

    def release(self) -> None:
        pass


class CountingBoard(TaskBoard):
    """A board whose site is always waiting; counts the wake-ups."""

    def __init__(self) -> None:
        super().__init__()
        self.wakeups = 0

    def waiting_sites(self) -> list[str]:
        return ["site-a"]

    def notify(self, site_ids: Iterable[str]) -> None:
        self.wakeups += len(list(site_ids))


async def _wakeups(ticks: int, *, heard: bool) -> int:
    done = asyncio.Event()
    board = CountingBoard()

    async def never_leads() -> None:
        raise AssertionError("a follower runs no rounds")

    loop_task = asyncio.create_task(
        lead_rounds(
            Follower(ticks, done, asyncio.get_running_loop()),  # type: ignore[arg-type]
            board,
            never_leads,
            interval_s=0.0,
            tasks_heard=lambda: heard,
        )
    )
    await asyncio.wait_for(done.wait(), timeout=30)
    await asyncio.sleep(0)  # the last tick's wake-up, if any
    loop_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loop_task
    return board.wakeups


@pytest.mark.parametrize("heard", [False, True])
def test_a_follower_wakes_its_sites_every_tick_only_when_it_cannot_hear(heard: bool) -> None:
    ticks = 3 * FOLLOWER_SAFETY_TICKS
    woken = asyncio.run(_wakeups(ticks, heard=heard))
    # (the loop is stopped around its last tick: that tick's wake-up may or may not be counted)
    if heard:
        assert woken in (2, 3), woken
    else:
        assert ticks - 1 <= woken <= ticks, woken
