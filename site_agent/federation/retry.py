"""Bounded exponential backoff with jitter, for every request the agent makes (tenacity).

``Backoff`` is the policy (first delay, largest delay, number of retries); tenacity runs it.
The delay before retry ``k`` (``k = 1, 2, ...``) is drawn uniformly from ``[d/2, d]`` with
``d = min(maximum, initial * 2**(k-1))`` ("equal jitter"): never shorter than half the
exponential step, never longer than ``maximum``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random_exponential,
)

if TYPE_CHECKING:
    from tenacity.wait import wait_base

    from site_agent.settings import SiteSettings


@dataclass(frozen=True)
class Backoff:
    """How often and how patiently a failed request is tried again.

    Args:
        initial: first delay in seconds (its upper bound). Default 1.0. Example: ``0.05`` in tests.
        maximum: largest delay in seconds. Default 60.0.
        retries: how many retries after the first try. Default 8.
        sleep: the sleeping function (tests pass a recorder). Default ``time.sleep``.
    """

    initial: float = 1.0
    maximum: float = 60.0
    retries: int = 8
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def from_settings(cls, settings: SiteSettings) -> Backoff:
        """The policy the settings ask for (FEDSEG_SITE_BACKOFF_*, FEDSEG_SITE_MAX_RETRIES)."""
        return cls(settings.backoff_initial_s, settings.backoff_max_s, settings.max_retries)

    def wait(self) -> wait_base:
        """Tenacity's wait: half the capped exponential step fixed, the other half random."""
        half, cap = self.initial / 2, self.maximum / 2
        return wait_exponential(multiplier=half, max=cap) + wait_random_exponential(
            multiplier=half, max=cap
        )

    def retrying(
        self,
        retry_on: type[BaseException] | tuple[type[BaseException], ...],
        *,
        before_sleep: Callable[[RetryCallState], None] | None = None,
    ) -> Retrying:
        """A tenacity ``Retrying`` that tries ``retries + 1`` times while ``retry_on`` is raised.

        Any other exception passes through at once. When the tries are spent tenacity raises
        ``tenacity.RetryError`` (its ``last_attempt`` holds the last exception and the count).

        Args:
            retry_on: the exception type(s) worth another try.
            before_sleep: called before each pause (for a log line). Default none.
        """
        return Retrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=self.wait(),
            retry=retry_if_exception_type(retry_on),
            sleep=self.sleep,
            before_sleep=before_sleep,
        )
