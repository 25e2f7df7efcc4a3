"""Wakes long-polling sites when a task appears for them (no busy polling).

Each site has at most one pending ``asyncio.Future`` (shared by its pollers); ``notify`` resolves
and forgets it, so a poller that took the future before checking the database cannot miss a task
created after its check. A future, not an ``asyncio.Event``: every site of a federation waits
on one between rounds, and a poller attaches a callback to it instead of running a task that
waits on an event.
``close`` (the server is stopping) wakes every poller, so each answers 204 at once instead of
being cancelled at the end of uvicorn's graceful-shutdown timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


class TaskBoard:
    """Per-site wake-up futures for ``GET /tasks/next?wait=S``."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Future[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False  # the server is stopping: pollers answer at once

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remember the event loop the events belong to (called at start-up)."""
        self._loop = loop

    def waiter(self, site_id: str) -> asyncio.Future[None]:
        """The future a poller of ``site_id`` waits on; take it *before* looking for a task.

        Call on the event loop. Once the board is closed, a future already done.
        """
        if self.closed:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        event = self._events.get(site_id)
        if event is None:
            event = self._events[site_id] = asyncio.get_running_loop().create_future()
        return event

    def waiting_sites(self) -> list[str]:
        """Sites with a poller waiting (a follower process wakes them all to look again)."""
        return list(self._events)

    def notify(self, site_ids: Iterable[str]) -> None:
        """Wake every poller of these sites (call on the event loop)."""
        for site_id in site_ids:
            event = self._events.pop(site_id, None)
            if event is not None and not event.done():
                event.set_result(None)

    def close(self) -> None:
        """The server is stopping: wake every poller now, and any later one at once.

        Called on the event loop (uvicorn calls ``shutdown`` of each connection there); the
        second and later calls do nothing.
        """
        if self.closed:
            return
        self.closed = True
        events, self._events = self._events, {}
        for event in events.values():
            if not event.done():
                event.set_result(None)

    def notify_threadsafe(self, site_ids: Iterable[str]) -> None:
        """``notify`` from a worker thread."""
        ids = list(site_ids)
        if ids and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.notify, ids)

    def wake_all_threadsafe(self) -> None:
        """Wake every waiting poller, from any thread (tasks were announced by another process)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: self.notify(self.waiting_sites()))
