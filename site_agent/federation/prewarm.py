"""Import the training stack (torch, MONAI) on a background thread while the agent waits.

A fresh agent enrolls and long-polls with light modules only; ``site_agent.federation.task_runner`` pulls
in torch and MONAI (seconds of CPU), which the first task needs. ``start_prewarm`` starts that
import on a daemon thread as soon as the agent has enrolled, so the first task finds it done
(or finishes it: the main thread's own ``import`` waits on the module lock and never imports
twice). It is started *after* the start-up checks and enrollment, whose own imports run on the
main thread, so the two threads never hold import locks the other needs.

The thread runs at the lowest CPU priority (Linux gives each thread its own nice value): its
seconds of CPU then take only what the start-up of the aggregator and of the other agents on
the host leave idle, instead of delaying round 1. ``hurry`` gives it the process's priority
back when the first task needs the import.

An import error here is only logged: the main thread's import raises the same error, on the
first task, where the loop already handles it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
import time

log = logging.getLogger(__name__)

PREWARM_MODULE = "site_agent.federation.task_runner"
"""What the first task imports (and, through it, torch, MONAI and the trainer)."""


def start_prewarm(module: str = PREWARM_MODULE) -> threading.Thread:
    """Import ``module`` on a daemon thread and return the thread (already started).

    Args:
        module: dotted module name. Default ``site_agent.federation.task_runner``.

    Returns:
        The started thread; ``join()`` it to wait for the import.
    """
    thread = threading.Thread(target=_import, args=(module,), name="fedseg-prewarm", daemon=True)
    thread.start()
    return thread


_BACKGROUND_NICE = 19
_threads: dict[int, int] = {}  # native id of a prewarm thread -> the process's nice value


def hurry() -> None:
    """Give running prewarm threads the process's priority back (the first task waits on them).

    Raising a priority again may need privileges (``RLIMIT_NICE``); without them it stays low.
    """
    for native_id, nice in list(_threads.items()):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, native_id, nice)


def _lower_priority() -> None:
    native_id = threading.get_native_id()
    with contextlib.suppress(OSError, AttributeError):  # not Linux: run at the process's priority
        nice = os.getpriority(os.PRIO_PROCESS, native_id)
        _threads[native_id] = nice
        os.setpriority(os.PRIO_PROCESS, native_id, max(nice, _BACKGROUND_NICE))


def _import(module: str) -> None:
    _lower_priority()
    try:
        _timed_import(module)
    finally:
        _threads.pop(threading.get_native_id(), None)


def _timed_import(module: str) -> None:
    started = time.perf_counter()
    try:
        importlib.import_module(module)
    except Exception as exc:  # the first task's own import reports it where it is handled
        log.warning("pre-import of %s failed: %s: %s", module, type(exc).__name__, exc)
        return
    log.debug("pre-imported %s in %.2f s", module, time.perf_counter() - started)
