"""Token buckets keyed by token hash or client address, and a cap on concurrent uploads.

In memory and per process (the aggregator is one process): enough to stop one caller from
guessing tokens at hundreds per second or flooding the blob store; a restart forgets them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from aggregator.errors import TooManyRequestsError

_MAX_KEYS = 10_000  # oldest keys are forgotten beyond this, so memory stays bounded


class RateLimiter:
    """A token bucket per key: ``burst`` events at once, then ``per_minute`` refilled evenly.

    Args:
        per_minute: sustained events per minute per key. Example: ``30``.
        burst: events allowed at once. Example: ``10``.
        clock: seconds, monotonic (tests pass a fake).
    """

    def __init__(
        self, *, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def blocked_for(self, key: str) -> float:
        """Seconds until ``key`` may act again (0 when it may act now); consumes nothing."""
        with self._lock:
            tokens = self._tokens(key)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate if self.rate else 3600.0

    def hit(self, key: str) -> bool:
        """Consume one event for ``key``; False when its bucket was empty (nothing consumed)."""
        with self._lock:
            tokens = self._tokens(key)
            if tokens < 1.0:
                return False
            self._buckets[key] = (tokens - 1.0, self.clock())
            self._buckets.move_to_end(key)
            while len(self._buckets) > _MAX_KEYS:
                self._buckets.popitem(last=False)
            return True

    def check(self, *keys: str, what: str) -> None:
        """Raise unless every key may act now (consumes nothing).

        Raises:
            TooManyRequestsError: naming ``what`` and when to retry.
        """
        wait = max((self.blocked_for(k) for k in keys), default=0.0)
        if wait > 0:
            raise TooManyRequestsError(
                f"too many {what}; retry in {wait:.0f} s", retry_after_s=wait
            )

    def _tokens(self, key: str) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return self.burst
        tokens, then = entry
        return min(self.burst, tokens + (self.clock() - then) * self.rate)


class UploadSlots:
    """At most ``limit`` uploads streaming at once; the next one is refused with 429.

    Args:
        limit: concurrent uploads. Example: ``8``.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._lock = threading.Lock()

    def check(self) -> None:
        """Refuse early, before any other work, when every slot is taken (``hold`` decides).

        Raises:
            TooManyRequestsError: every slot is taken.
        """
        if self.active >= self.limit:
            raise self._full()

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold one slot while the body streams in.

        Raises:
            TooManyRequestsError: every slot is taken.
        """
        with self._lock:
            if self.active >= self.limit:
                raise self._full()
            self.active += 1
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1

    def _full(self) -> TooManyRequestsError:
        return TooManyRequestsError(
            f"{self.limit} uploads are already in progress; retry shortly", retry_after_s=5.0
        )
