"""Fewer glibc malloc arenas for the aggregator process: memory that levels off lower.

glibc gives each thread that allocates under contention an arena of its own, up to eight per
core. The aggregator's threads (anyio's pool, its database threads, the bookkeeping writer, the
orchestrator) each filled one during a round's burst of requests, and each arena kept its own
free fragments afterwards: at 1,000 sites glibc held 25–33 MiB of free memory after every round
(``benchmarks/results/scale.md``, section K). Python allocates small objects itself, under the
GIL, so the extra arenas bought no measurable speed. With two arenas (as ``MALLOC_ARENA_MAX=2``)
10 rounds of 1,000 sites ended at 171–179 MiB of RSS, against 192 with glibc's default.

``serve`` calls ``limit_malloc_arenas`` before it starts any thread: arenas that exist stay.
"""

from __future__ import annotations

import ctypes
import logging
import os

from aggregator.logs import log_event

log = logging.getLogger("aggregator.malloc_arenas")

M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameter number for the arena limit (``<malloc.h>``)."""


def limit_malloc_arenas(arenas: int) -> bool:
    """Let this process's C allocator use at most ``arenas`` arenas (glibc only).

    Args:
        arenas: the limit; 0 keeps the C library's default. Example: ``2``.

    Returns:
        True when the limit was set; False for 0, where the operator set ``MALLOC_ARENA_MAX``
        (glibc read it at start-up), or where the C library has no ``mallopt`` or refused it.
    """
    if arenas <= 0 or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):  # pragma: no cover - no dynamic C library (not Linux)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_ARENA_MAX, arenas))
    if not done:
        log_event(log, "malloc_arenas.refused", level=logging.INFO, arenas=arenas)
    return done
