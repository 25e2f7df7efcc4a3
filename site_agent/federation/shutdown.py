"""Graceful stop of ``fedseg site run``: SIGTERM abandons the current step and exits within seconds.

``docker stop``, Kubernetes and systemd send SIGTERM, wait a grace period (10 s for Docker), then
SIGKILL. The agent's work dir is already safe against a kill at any instant: every file is
written to a temp file and renamed, and ``state.json`` records the last finished phase, so a
restart resumes there (``site_agent.federation.task_runner``). A stop therefore does not wait for a training
step or an upload to end: the handler raises ``StopRequested`` in the main thread, which unwinds
through the atomic writers (they remove their temp files) and ends the process.

Python runs a signal handler only between bytecodes, so a long native call (one big 3-D
convolution) could delay the unwinding. A watchdog thread ends the process with ``os._exit`` after
``grace_s`` seconds in that case; the work dir is then exactly as after ``kill -9`` (temp files at
most, which ``WorkDir.remove_partial_files`` sweeps at the next start).

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

    def _handle(signum: int, _frame: FrameType | None) -> None:
        if state["signalled"]:
            os._exit(EXIT_FORCED)
        state["signalled"] = True
        if stop_event is not None:
            stop_event.set()
        _start_watchdog(grace_s)
        raise StopRequested(signum)

    previous = {sig: signal.signal(sig, _handle) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start_watchdog(grace_s: float) -> None:
    def _expire() -> None:
        log.error("still running %.1f s after the stop signal; exiting now", grace_s)
        logging.shutdown()
        os._exit(EXIT_FORCED)

    timer = threading.Timer(grace_s, _expire)
    timer.daemon = True  # a clean exit before the deadline does not wait for it
    timer.start()
