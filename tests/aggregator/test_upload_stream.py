"""An upload's body is read chunk by chunk, each chunk within the body timeout
(``aggregator.api.uploads._timed``): a stalled body is refused, the server's own work on a
chunk does not count against it, and a body that ends early or is left early leaves no timer
behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from aggregator.api.uploads import _timed
from aggregator.errors import InvalidRequestError


async def _body(*delays: float) -> AsyncIterator[bytes]:
    """A chunk after each delay (seconds)."""
    for i, delay in enumerate(delays):
        await asyncio.sleep(delay)
        yield bytes([i]) * 3


async def _read(chunks: AsyncIterator[bytes], *, work_s: float = 0.0) -> list[bytes]:
    got = []
    async for chunk in chunks:
        got.append(chunk)
        await asyncio.sleep(work_s)  # the caller's work on the chunk
    return got


def test_chunks_in_time_come_through_in_order() -> None:
    got = asyncio.run(_read(_timed(_body(0, 0.01, 0), 0.5)))
    assert got == [b"\x00" * 3, b"\x01" * 3, b"\x02" * 3]


def test_a_stalled_body_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match=r"body stalled: no data for 0\.05 s"):
        asyncio.run(_read(_timed(_body(0, 0.5), 0.05)))


def test_the_callers_work_on_a_chunk_does_not_count() -> None:
    got = asyncio.run(_read(_timed(_body(0, 0, 0), 0.05), work_s=0.1))
    assert len(got) == 3


def test_a_caller_that_stops_early_leaves_the_task_uncancelled() -> None:
    async def main() -> bool:
        chunks = _timed(_body(0, 0, 0), 0.05)
        async for _ in chunks:
            break
        await chunks.aclose()  # type: ignore[attr-defined]
        await asyncio.sleep(0.1)  # past the deadline: nothing may fire
        task = asyncio.current_task()
        return task is not None and task.cancelling() == 0

    assert asyncio.run(main())
