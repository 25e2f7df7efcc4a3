"""Work on the agent's daemon threads, its result or exception in a ``Future``."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


def done() -> Future[None]:
    """A future that has already finished (nothing to wait for)."""
    future: Future[None] = Future()
    future.set_result(None)
    return future


def on_thread(work: Callable[[], T], name: str) -> Future[T]:
    """``work()`` on a daemon thread named ``name``; its result or exception in the future.

    The thread is an idle one from an earlier call when there is one: ``Thread.start`` waits
    until the new thread runs, which on a busy host cost the round's path a few ms per call
    (three per task). A call that finds no idle thread starts one, so a hung call (a trainer
    factory stuck on a network share) never holds up the next.
    """
    future: Future[T] = Future()
    future.set_running_or_notify_cancel()

    def run() -> None:
        threading.current_thread().name = name
        try:
            result = work()
        except BaseException as exc:  # handed to whoever takes the result
            future.set_exception(exc)
        else:
            future.set_result(result)

    _WORKERS.submit(run)
    return future


class _DaemonThreads:
    """Daemon threads that wait for the next piece of work when done with one."""

    def __init__(self) -> None:
        self._work: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, work: Callable[[], None]) -> None:
        """Hand ``work`` (which raises nothing) to an idle thread, or to a new one."""
        with self._lock:
            start = self._idle == 0
            if not start:
                self._idle -= 1  # that thread's next get() takes this work (or another's)
        self._work.put(work)
        if start:
            threading.Thread(target=self._serve, name="fedseg-worker", daemon=True).start()

    def _serve(self) -> None:
        while True:
            self._work.get()()
            threading.current_thread().name = "fedseg-worker"
            with self._lock:
                self._idle += 1


_WORKERS = _DaemonThreads()
