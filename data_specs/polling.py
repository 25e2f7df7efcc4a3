"""Poll until something is ready, or give up at a deadline (tenacity); one helper for every wait.

A poll is not a retry: each attempt succeeds, and its *result* says whether to look again
(a step still open, an experiment still running, sites not enrolled yet). ``poll_until`` asks,
checks the result, stops at the deadline, else pauses a fixed interval and asks again. Errors
raised by the attempt pass through at once. When the deadline passes the caller's ``give_up``
turns the last result into the exception to raise (so each wait keeps its own message).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NoReturn, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_result,
    stop_after_delay,
    stop_never,
    wait_exponential,
    wait_fixed,
)
from tenacity.stop import stop_base

T = TypeVar("T")


class _stop_when(stop_base):
    """Stop once ``expired()`` says so (a deadline on another clock than tenacity's)."""

    def __init__(self, expired: Callable[[], bool]) -> None:
        self.expired = expired

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.expired()


def poll_until(
    attempt: Callable[[], T],
    done: Callable[[T], bool],
    *,
    interval_s: float,
    give_up: Callable[[T], BaseException],
    timeout_s: float | None = None,
    expired: Callable[[], bool] | None = None,
    sleep: Callable[[float], None] | None = None,
    first_interval_s: float | None = None,
    backoff: float = 1.5,
) -> T:
    """Call ``attempt`` until ``done(result)``; returns that result.

    Order per round: ask, return if done, raise ``give_up(result)`` if the deadline passed,
    else sleep ``interval_s``. With neither ``timeout_s`` nor ``expired`` it waits for ever.

    Args:
        attempt: one look (a request); its exceptions propagate unchanged.
        done: whether a result ends the wait.
        interval_s: seconds between looks. Example: ``0.5``.
        give_up: builds the exception raised at the deadline from the last result.
        timeout_s: give up once this many seconds (monotonic) have passed since the first
            look. Default None.
        expired: give up once this returns True (e.g. a task's deadline on the caller's
            clock). Default None.
        sleep: the pause (tests pass a recorder). Default ``time.sleep``, looked up per call.
        first_interval_s: the first pause when polls should start sooner and back off: each
            further pause is ``backoff`` times longer, up to ``interval_s``. Default None
            (every pause is ``interval_s``).
        backoff: growth of the pause after ``first_interval_s``. Default 1.5.

    Raises:
        BaseException: what ``give_up`` returns, when the deadline passed first.
    """
    stop: stop_base = stop_never
    if timeout_s is not None:
        stop = stop_after_delay(timeout_s)
    if expired is not None:
        stop = stop | _stop_when(expired) if timeout_s is not None else _stop_when(expired)

    def _give_up(state: RetryCallState) -> NoReturn:
        assert state.outcome is not None  # tenacity stops only after an attempt
        raise give_up(state.outcome.result())

    retrying = Retrying(
        stop=stop,
        wait=(
            wait_fixed(interval_s)
            if first_interval_s is None
            else wait_exponential(
                multiplier=min(first_interval_s, interval_s), exp_base=backoff, max=interval_s
            )
        ),
        retry=retry_if_result(lambda result: not done(result)),
        sleep=sleep or (lambda seconds: time.sleep(seconds)),
        retry_error_callback=_give_up,
    )
    return retrying(attempt)
