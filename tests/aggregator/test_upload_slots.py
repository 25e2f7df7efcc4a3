"""Upload slots: a full house queues uploads briefly (first come, first served) before any 429."""

from __future__ import annotations

import asyncio

import pytest

from aggregator.errors import TooManyRequestsError
from aggregator.rate_limits import UploadSlots


def test_an_upload_waits_for_a_slot_and_gets_the_one_freed() -> None:
    async def scenario() -> list[str]:
        slots = UploadSlots(1, wait_s=5.0)
        order: list[str] = []

        async def upload(name: str, hold_s: float) -> None:
            async with slots.take():
                order.append(f"{name} in")
                await asyncio.sleep(hold_s)
            order.append(f"{name} out")

        first = asyncio.create_task(upload("a", 0.05))
        await asyncio.sleep(0)
        assert slots.active == 1
        await asyncio.gather(first, upload("b", 0.0), upload("c", 0.0))
        assert slots.active == 0 and slots.waiting == 0
        return order

    order = asyncio.run(scenario())
    assert order.index("a out") < order.index("b in") < order.index("c in")  # in turn


def test_a_wait_ends_in_429_after_wait_s_and_when_too_many_wait() -> None:
    async def scenario() -> None:
        slots = UploadSlots(1, wait_s=0.05, max_waiting=1)
        async with slots.take():
            waiter = asyncio.create_task(slots.take().__aenter__())
            await asyncio.sleep(0)
            assert slots.waiting == 1
            with pytest.raises(TooManyRequestsError):
                slots.check()  # one waits already: the next is refused before any work
            with pytest.raises(TooManyRequestsError):
                async with slots.take():
                    pass
            with pytest.raises(TooManyRequestsError):
                await waiter  # no slot within wait_s
        assert slots.active == 0 and slots.waiting == 0

    asyncio.run(scenario())


def test_a_waiting_upload_whose_client_leaves_gives_its_slot_on() -> None:
    async def scenario() -> None:
        slots = UploadSlots(1, wait_s=5.0)
        async with slots.take():
            gone = asyncio.create_task(slots.take().__aenter__())
            await asyncio.sleep(0)
            gone.cancel()
            await asyncio.sleep(0)
        assert slots.active == 0 and slots.waiting == 0
        async with slots.take():
            assert slots.active == 1

    asyncio.run(scenario())


def test_without_waiting_a_full_house_is_refused_at_once() -> None:
    async def scenario() -> None:
        slots = UploadSlots(1)
        async with slots.take():
            with pytest.raises(TooManyRequestsError):
                slots.check()
            with pytest.raises(TooManyRequestsError):
                async with slots.take():
                    pass

    asyncio.run(scenario())
