"""A small pool of threads of its own for the database work of a site's per-round requests.

A route's blocking work (SQL, fsync) runs off the event loop. FastAPI's ``run_in_threadpool``
hands it to anyio's pool: up to 40 threads, the most recently idle first, so nearly every
hand-over wakes a sleeping thread, and at a thousand sites those wake-ups
(``threading.Condition.notify`` in anyio's queue) were the largest single item of the
aggregator's profile (issue 20, ``benchmarks/results/scale.md`` section G). Here a few threads
share one queue: under load they are still busy with the previous calls when the next one is
queued, and take it without being woken.

``run`` keeps anyio's semantics where they matter: the call runs in a copy of the caller's
context, and if the awaiting request is cancelled (a server stopping), the cancellation goes on
only after the call has finished, so a ``finally`` after it (an upload's ``staged.discard()``)
never races the thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# SQLite has one writer at a time and the GIL runs one thread of Python: a few threads keep
# the queue moving (fsyncs and PostgreSQL round trips release the GIL), far fewer than the
# engine's connection pool (16 + 48 on SQLite, 10 + 30 on PostgreSQL).
THREADS = 6
_pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="fedseg-db")


async def run(func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` on the pool; waits for it to finish even when cancelled meanwhile."""
    call = functools.partial(contextvars.copy_context().run, func, *args)
    future = asyncio.get_running_loop().run_in_executor(_pool, call)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        # As anyio: the thread's work ends before the cancellation propagates.
        await asyncio.wait([future])
        raise


async def read(func: Callable[..., T], *args: Any, inline: bool) -> T:
    """A short read-only call: on the event loop when ``inline``, on the pool otherwise.

    A site's poll, model lookup and upload check read a few indexed rows. On SQLite in WAL mode
    a reader never waits for a writer, and those rows cost less CPU than the two hand-overs
    (to a worker thread and back) that ``run`` makes: at a thousand sites the hand-overs were a
    fifth of the aggregator's CPU. PostgreSQL answers over a socket, so there the call stays on
    the pool (``inline=False``). Nothing that writes or fsyncs belongs here.
    """
    if inline:
        return func(*args)
    return await run(func, *args)
