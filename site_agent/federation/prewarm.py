"""Import the training stack (torch, MONAI) on a background thread while the agent waits.

A fresh agent enrolls and long-polls with light modules only. Its first task imports torch (with
``site_agent.federation.task_runner``), MONAI (when it builds the network) and ``torch._dynamo``
(when it builds its optimizer): seconds of CPU. ``start_prewarm`` starts those
imports on a daemon thread as soon as the agent has enrolled, so the first task finds them done.
It is started *after* the start-up checks and enrollment, whose own imports run on the main
thread, and the first task waits for it (``finish_prewarm``) before it starts threads of its
own, so no two threads ever import the same package tree at once.

The thread runs at the lowest CPU priority (Linux gives each thread its own nice value): its
seconds of CPU then take only what the start-up of the aggregator and of the other agents on
the host leave idle, instead of delaying round 1. ``hurry`` (called by ``finish_prewarm``) gives
it the process's priority back when the first task needs the imports.

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

PREWARM_MODULES = (
    "site_agent.federation.task_runner",
    "monai.networks.nets",
    "torch._dynamo",
)
"""What the first task imports, in order: the task runner (torch and the trainer); MONAI, which
the trainer imports only when it builds the network (``monai.networks.nets`` pulls in its
losses, transforms, data and metrics: 4.3 CPU s on the 2-core machine of December 2026); then
``torch._dynamo``, which torch imports when the first optimizer is built (its
``add_param_group`` is wrapped by ``torch._disable_dynamo``: 2.6 CPU s there)."""


def start_prewarm(*modules: str) -> threading.Thread:
    """Import ``modules`` one after the other on a daemon thread; return the thread (started).

    Args:
        modules: dotted module names. Default ``PREWARM_MODULES``.

    Returns:
        The started thread; ``join()`` it (or ``finish_prewarm()``) to wait for the imports.
    """
    thread = threading.Thread(
        target=_import, args=(modules or PREWARM_MODULES,), name="fedseg-prewarm", daemon=True
    )
    with _lock:
        _needed.clear()  # a new wait for a first task
        _started.append(thread)
    thread.start()
    return thread


_BACKGROUND_NICE = 19
_lock = threading.Lock()
_threads: dict[int, int] = {}  # native id of a prewarm thread -> the process's nice value
_started: list[threading.Thread] = []  # prewarm threads not yet joined by finish_prewarm
_needed = threading.Event()  # set by hurry: later prewarm threads keep the process's priority


def hurry() -> None:
    """Give running prewarm threads the process's priority back (the first task waits on them).

    Raising a priority again may need privileges (``RLIMIT_NICE``); without them it stays low.
    """
    with _lock:
        _needed.set()
        lowered = list(_threads.items())
    for native_id, nice in lowered:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, native_id, nice)


def finish_prewarm(timeout: float | None = None) -> None:
    """``hurry``, then wait until every prewarm thread has imported its modules.

    The first task calls this before it starts threads of its own (the trainer's data loading
    imports MONAI too). Two threads importing the same package tree at once can each hold a
    module lock the other needs; Python then breaks the cycle by raising ``_DeadlockError`` in
    one of them (seen in ``fedseg demo`` when a prewarm of MONAI met the trainer's). Waiting
    costs the first task nothing it would not spend importing the same modules itself.

    Args:
        timeout: seconds to wait for each thread. Default None (until done).
    """
    hurry()
    with _lock:
        threads = list(_started)
    for thread in threads:
        thread.join(timeout)
    with _lock:
        _started[:] = [t for t in _started if t.is_alive()]
    if threads:
        _raise_inherited()


def _raise_inherited() -> None:
    """Give the process's priority to threads left at the background nice value.

    A thread inherits its creator's nice value: the native threads that torch and MONAI start
    while the prewarm imports them (two, with torch 2.13 and MONAI 1.6) would stay at nice 19
    for the agent's life. Nothing else in the agent lowers a thread's priority.
    """
    with contextlib.suppress(OSError, AttributeError):  # not Linux: nothing was lowered
        own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        if own >= _BACKGROUND_NICE:
            return
        for native_id in _low_threads():
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, native_id, own)


def _low_threads() -> list[int]:
    """Native ids of this process's threads at the background nice value (Linux ``/proc``)."""
    found = []
    for entry in os.scandir("/proc/self/task"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/self/task/{entry.name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            if int(fields[16]) == _BACKGROUND_NICE:  # field 19 of stat(5): nice
                found.append(int(entry.name))
    return found


def _lower_priority() -> None:
    native_id = threading.get_native_id()
    with _lock, contextlib.suppress(OSError, AttributeError):  # not Linux: the process's priority
        if _needed.is_set():  # the first task already waits on this import
            return
        nice = os.getpriority(os.PRIO_PROCESS, native_id)
        _threads[native_id] = nice
        os.setpriority(os.PRIO_PROCESS, native_id, max(nice, _BACKGROUND_NICE))


def _import(modules: tuple[str, ...]) -> None:
    _lower_priority()
    try:
        for module in modules:
            _timed_import(module)
    finally:
        with _lock:
            _threads.pop(threading.get_native_id(), None)


def _timed_import(module: str) -> None:
    started = time.perf_counter()
    try:
        importlib.import_module(module)
    except Exception as exc:  # the first task's own import reports it where it is handled
        log.warning("pre-import of %s failed: %s: %s", module, type(exc).__name__, exc)
        return
    log.debug("pre-imported %s in %.2f s", module, time.perf_counter() - started)
