"""``aggregator.api.db_threads.run``: off the event loop, in the caller's context, and a
cancelled caller still waits for the call to end (as anyio's ``to_thread.run_sync``)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

from aggregator.api import db_threads

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


def test_runs_on_a_pool_thread_in_the_callers_context() -> None:
    async def main() -> tuple[str, str]:
        WHO.set("site-a")
        return await db_threads.run(lambda: (threading.current_thread().name, WHO.get()))

    thread, who = asyncio.run(main())
    assert thread.startswith("fedseg-db") and who == "site-a"


def test_a_cancelled_caller_waits_for_the_call_to_end() -> None:
    events: list[str] = []

    def slow() -> None:
        time.sleep(0.3)
        events.append("call ended")

    async def main() -> None:
        task = asyncio.create_task(db_threads.run(slow))
        await asyncio.sleep(0.05)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            events.append("caller cancelled")

    asyncio.run(main())
    # A plain run_in_executor would report the cancellation first, with the call still running
    # (an upload's ``finally: staged.discard()`` would then race its own acceptance).
    assert events == ["call ended", "caller cancelled"]


def test_a_read_runs_inline_only_when_asked() -> None:
    def where() -> str:
        return threading.current_thread().name

    async def main() -> tuple[str, str]:
        return (
            await db_threads.read(where, inline=True),
            await db_threads.read(where, inline=False),
        )

    inline, pooled = asyncio.run(main())
    assert inline == threading.current_thread().name  # the event loop's own thread
    assert pooled.startswith("fedseg-db")
