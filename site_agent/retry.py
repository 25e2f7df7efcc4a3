"""Bounded exponential backoff with full jitter, for every request the agent makes."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from site_agent.settings import SiteSettings


@dataclass
class Backoff:
    """Delays ``initial * 2**k`` capped at ``maximum``, each drawn uniformly from [d/2, d].

    Args:
        initial: first delay in seconds. Default 1.0. Example: ``0.05`` in tests.
        maximum: largest delay in seconds. Default 60.0.
        retries: how many retries after the first try. Default 8.
        sleep: the sleeping function (tests pass a recorder). Default ``time.sleep``.
        rng: jitter source. Default a ``random.Random()``; pass ``random.Random(0)`` to fix it.
    """

    initial: float = 1.0
    maximum: float = 60.0
    retries: int = 8
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_settings(cls, settings: SiteSettings) -> Backoff:
        """The policy the settings ask for (FEDSEG_SITE_BACKOFF_*, FEDSEG_SITE_MAX_RETRIES)."""
        return cls(settings.backoff_initial_s, settings.backoff_max_s, settings.max_retries)

    def delays(self) -> Iterator[float]:
        """The ``retries`` delays to wait between tries, jittered (half to full delay)."""
        for attempt in range(self.retries):
            cap = min(self.maximum, self.initial * (2**attempt))
            yield cap / 2 + self.rng.random() * cap / 2

    def pause(self, seconds: float) -> None:
        """Wait ``seconds`` with the configured sleep."""
        self.sleep(seconds)
