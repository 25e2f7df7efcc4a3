"""Graceful stop of ``fedseg site run``: SIGTERM abandons the current step and exits within seconds.

``docker stop``, Kubernetes and systemd send SIGTERM, wait a grace period (10 s for Docker), then
SIGKILL. The agent's work dir is already safe against a kill at any instant: every file is
written to a temp file and renamed, and ``state.json`` records the last finished phase, so a
restart resumes there (``site_agent.federation.task_runner``). A stop therefore does not wait for a training
step or an upload to end: the handler raises ``StopRequested`` in the main thread, which unwinds
through the atomic writers (they remove their temp files) and ends the process.

Python runs a signal handler only between bytecodes of the main thread, so a long native call
(one big 3-D convolution) could delay the unwinding. A watchdog thread ends the process with
``os._exit`` ``grace_s`` seconds after the signal *arrived* in that case; the work dir is then
exactly as after ``kill -9`` (temp files at most, which ``WorkDir.remove_partial_files`` sweeps at
the next start). The deadline starts at arrival, not when the Python handler gets to run:
CPython's C-level handler writes the signal number to the ``signal.set_wakeup_fd`` pipe at once,
and a reader thread, blocked on that pipe, starts the watchdog. That thread needs the GIL, which
native code that releases it (torch's operators, I/O, sleeps) lets it have; the Python handler
starts the watchdog too, whichever comes first.

Example::

    with stop_on_signals(agent.stop_event):
        agent.run()
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

log = logging.getLogger(__name__)

EXIT_FORCED = 128 + signal.SIGTERM
"""Exit status when the watchdog had to end the process (the work dir is still consistent)."""
DEFAULT_GRACE_S = 4.0
"""Docker's default stop timeout is 10 s; the issue's budget is 5 s, so stop well before."""


class StopRequested(BaseException):  # like KeyboardInterrupt: not an error
    """A stop signal arrived; raised in the main thread to abandon the current step.

    A ``BaseException``, so that ``except Exception`` clauses (retries, failure reports) never
    swallow it and no failure is reported to the aggregator for a task that is merely paused.

    Args:
        signum: the signal number. Example: ``signal.SIGTERM``.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals(
    stop_event: threading.Event | None = None,
    *,
    grace_s: float = DEFAULT_GRACE_S,
    signals: tuple[signal.Signals, ...] = (signal.SIGTERM,),
) -> Iterator[None]:
    """Turn ``signals`` into ``StopRequested`` in the main thread, with a hard deadline.

    The first signal sets ``stop_event`` (so loops that check it stop too), starts the
    watchdog and raises ``StopRequested``; a second signal ends the process at once. The
    previous handlers are restored on exit. Outside the main thread (where Python cannot
    install handlers) it does nothing.

    Args:
        stop_event: set when a signal arrives. Default None.
        grace_s: seconds between the first signal and ``os._exit(EXIT_FORCED)``. Default 4.0.
        signals: the signals to handle. Default ``(SIGTERM,)``; SIGINT stays a
            ``KeyboardInterrupt``.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    state = {"signalled": False}
    deadline = _Deadline(grace_s)

    def _handle(signum: int, _frame: FrameType | None) -> None:
        if state["signalled"]:
            os._exit(EXIT_FORCED)
        state["signalled"] = True
        if stop_event is not None:
            stop_event.set()
        deadline.start()
        raise StopRequested(signum)

    previous = {sig: signal.signal(sig, _handle) for sig in signals}
    reader = _ArrivalReader({int(s) for s in signals}, deadline)
    try:
        yield
    finally:
        reader.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Deadline:
    """Starts the watchdog once, from whichever thread learns of the signal first."""

    def __init__(self, grace_s: float) -> None:
        self._grace_s = grace_s
        self._lock = threading.Lock()
        self._started = False

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        _start_watchdog(self._grace_s)


class _ArrivalReader:
    """A thread blocked on the ``set_wakeup_fd`` pipe: it starts the deadline at signal arrival.

    The previous wakeup fd (asyncio's, say) is restored on close and still gets every byte.
    Where the wakeup fd cannot be set, only the Python handler starts the deadline.
    """

    def __init__(self, signums: set[int], deadline: _Deadline) -> None:
        self._signums = signums
        self._deadline = deadline
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)  # set_wakeup_fd needs a non-blocking fd
        try:
            self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        except ValueError:  # not the main thread, or a closed fd: the handler path remains
            os.close(self._read_fd)
            os.close(self._write_fd)
            self._thread: threading.Thread | None = None
            return
        self._thread = threading.Thread(target=self._run, name="stop-deadline", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                data = os.read(self._read_fd, 64)
            except OSError:
                return
            if not data:  # the write end was closed: the context is over
                return
            if self._previous_fd >= 0:
                with contextlib.suppress(OSError):
                    os.write(self._previous_fd, data)
            if self._signums & set(data):
                self._deadline.start()

    def close(self) -> None:
        if self._thread is None:
            return
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(self._previous_fd)
        os.close(self._write_fd)  # the reader sees end of file and returns
        self._thread.join(timeout=5)
        os.close(self._read_fd)


def _start_watchdog(grace_s: float) -> None:
    def _expire() -> None:
        log.error("still running %.1f s after the stop signal; exiting now", grace_s)
        logging.shutdown()
        os._exit(EXIT_FORCED)

    timer = threading.Timer(grace_s, _expire)
    timer.daemon = True  # a clean exit before the deadline does not wait for it
    timer.start()
