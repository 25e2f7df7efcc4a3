"""Token buckets keyed by token hash or client address, and a cap on concurrent uploads.

In memory and per process (the aggregator is one process): enough to stop one caller from
guessing tokens at hundreds per second or flooding the blob store; a restart forgets them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

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
        wait = 0.0
        for key in keys:
            if key in self._buckets:  # a key never hit has its whole burst: no lock needed
                wait = max(wait, self.blocked_for(key))
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
    """At most ``limit`` uploads streaming at once; the next ones wait their turn, briefly.

    An upload that finds every slot taken queues (first come, first served) for up to
    ``wait_s`` seconds while its body waits unread in the socket, and is refused with 429 only
    after that, or at once when ``max_waiting`` uploads already wait. A thousand sites
    uploading in the same second used to get hundreds of 429s, each a full request again
    after the agent's backoff; waiting costs no CPU.

    Args:
        limit: concurrent uploads. Example: ``8``.
        wait_s: longest wait for a slot. Default 0: refuse at once.
        max_waiting: uploads allowed to wait at once. Default 1024.
    """

    def __init__(self, limit: int, *, wait_s: float = 0.0, max_waiting: int = 1024) -> None:
        self.limit = limit
        self.wait_s = wait_s
        self.max_waiting = max_waiting
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        """Uploads waiting for a slot now."""
        return len(self._waiters)

    def check(self) -> None:
        """Refuse early, before any other work, when no slot will come (``take`` decides).

        Raises:
            TooManyRequestsError: every slot is taken and no upload may wait for one.
        """
        if self.active >= self.limit and (self.wait_s <= 0 or self.waiting >= self.max_waiting):
            raise self._full()

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold one slot, without waiting.

        Raises:
            TooManyRequestsError: every slot is taken.
        """
        with self._lock:
            if self.active >= self.limit or self._waiters:
                raise self._full()
            self.active += 1
        try:
            yield
        finally:
            self._release()

    @asynccontextmanager
    async def take(self) -> AsyncIterator[None]:
        """Hold one slot while the body streams in, waiting up to ``wait_s`` for it.

        Raises:
            TooManyRequestsError: no slot within ``wait_s``, or too many waiting already.
        """
        await self._acquire()
        try:
            yield
        finally:
            self._release()

    async def _acquire(self) -> None:
        with self._lock:
            if self.active < self.limit and not self._waiters:
                self.active += 1
                return
            if self.wait_s <= 0 or len(self._waiters) >= self.max_waiting:
                raise self._full()
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(turn)
        try:
            await asyncio.wait_for(turn, timeout=self.wait_s)  # _release hands its slot over
        except TimeoutError:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove(turn)
            raise self._full() from None
        except BaseException:  # cancelled (the client left): give back a slot handed over
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove(turn)
            if turn.done() and not turn.cancelled():
                self._release()
            raise

    def _release(self) -> None:
        with self._lock:
            while self._waiters:
                turn = self._waiters.popleft()
                if not turn.done():
                    turn.set_result(None)  # the slot passes to the longest waiting upload
                    return
            self.active -= 1

    def _full(self) -> TooManyRequestsError:
        return TooManyRequestsError(
            f"{self.limit} uploads are already in progress; retry shortly", retry_after_s=5.0
        )
