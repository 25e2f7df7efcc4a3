"""A task's first delivery and the bytes served for it, written in batches off the site's request.

A thousand sites poll for their task and fetch the global model at the start of every round.
Each of those requests used to commit a one-row bookkeeping ``UPDATE`` (``delivered_at``, the
``assigned → delivered`` status, ``bytes_down``): two thousand write transactions per round,
one after the other on SQLite's single writer lock, which the uploads then queued behind. None
of it is something a site is promised: a lost delivery record only means the task is handed
out again, and ``bytes_down`` is a counter for the researcher's tables.

A site's ``last_seen_at`` is the same kind of note: it was written by the request that looked
its token up, once every 30 s per site, a write transaction of its own (at a thousand sites,
over thirty a second). ``seen`` notes it here instead, at most once per ``seen_every_s``.

``TaskBookkeeping`` keeps these notes in memory and writes them, about every ``interval_s``,
in one transaction of up to three ``executemany`` statements (a relaxed commit on SQLite, as before).
A request that reads them back (a researcher's round tables) calls ``flush`` first, so what a
process served is visible to what the same process reports. A killed process loses at most
the last interval's notes; the tasks themselves, and every report a site sent, are untouched.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import cast

from sqlalchemy import Table, bindparam, case, func, or_, update

from aggregator.storage.db import Database
from aggregator.storage.db.models import Site, Task, TaskStatus, utcnow
from aggregator.storage.db.relaxed import relax_next_commit

log = logging.getLogger("aggregator.crud.task_bookkeeping")

_tasks = cast(Table, Task.__table__)
_sites = cast(Table, Site.__table__)

_DELIVERED = (
    update(_tasks)
    .where(_tasks.c.id == bindparam("task_id"))
    .values(
        delivered_at=func.coalesce(_tasks.c.delivered_at, bindparam("at")),
        status=case(
            (_tasks.c.status == TaskStatus.ASSIGNED, TaskStatus.DELIVERED),
            else_=_tasks.c.status,
        ),
    )
)

_SERVED = (
    update(_tasks)
    .where(_tasks.c.id == bindparam("task_id"))
    .values(bytes_down=_tasks.c.bytes_down + bindparam("size"))
)


_SEEN = (
    update(_sites)
    .where(
        _sites.c.id == bindparam("site_id"),
        or_(_sites.c.last_seen_at.is_(None), _sites.c.last_seen_at < bindparam("at")),
    )
    .values(last_seen_at=bindparam("at"))
)


class TaskBookkeeping:
    """Delivery times and bytes served per task, and sites' visits, batched into one write
    every ``interval_s``.

    Args:
        database: where the tasks live.
        interval_s: how long notes gather before they are written. Default 0.1 s.
        seen_every_s: a site's visits are noted at most this often. Default 30 s.
    """

    def __init__(
        self, database: Database, *, interval_s: float = 0.1, seen_every_s: float = 30.0
    ) -> None:
        self._database = database
        self._interval_s = interval_s
        self._seen_every_s = seen_every_s
        self._lock = threading.Lock()
        self._delivered: dict[str, datetime] = {}
        self._served: dict[str, int] = {}
        self._seen: dict[str, datetime] = {}
        self._seen_next: dict[str, float] = {}  # site id -> time.monotonic() of its next note
        self._wake = threading.Event()
        self._stop = threading.Event()  # set by close(): ends the writer's waits at once
        self._closed = False
        self._thread: threading.Thread | None = None
        self._flushing = threading.Lock()  # one writer of notes at a time

    def delivered(self, task_id: str, at: datetime) -> None:
        """Note that a task was handed to its site (the first time counts)."""
        with self._lock:
            self._delivered.setdefault(task_id, at)
        self._kick()

    def served(self, task_id: str, size: int) -> None:
        """Note ``size`` bytes of the task's global model sent to its site."""
        with self._lock:
            self._served[task_id] = self._served.get(task_id, 0) + size
        self._kick()

    def seen(self, site_id: str, at: datetime | None = None) -> None:
        """Note a site's visit (its ``last_seen_at``; default now), unless one was noted in the
        last ``seen_every_s``."""
        now = time.monotonic()
        if now < self._seen_next.get(site_id, 0.0):
            return
        with self._lock:
            self._seen_next[site_id] = now + self._seen_every_s
            self._seen[site_id] = at or utcnow()
        self._kick()

    @property
    def pending(self) -> int:
        """Notes not yet written."""
        return len(self._delivered) + len(self._served) + len(self._seen)

    def flush(self) -> int:
        """Write every note taken so far (in the caller's thread); returns how many were written.

        On a database error the notes are kept for the next flush and the error is raised.
        """
        with self._flushing:
            with self._lock:
                delivered, self._delivered = self._delivered, {}
                served, self._served = self._served, {}
                seen, self._seen = self._seen, {}
            if not delivered and not served and not seen:
                return 0
            try:
                with self._database.session() as session:
                    relax_next_commit(session)  # bookkeeping: not worth an fsync
                    if delivered:
                        session.execute(
                            _DELIVERED, [{"task_id": t, "at": at} for t, at in delivered.items()]
                        )
                    if served:
                        session.execute(
                            _SERVED, [{"task_id": t, "size": n} for t, n in served.items()]
                        )
                    if seen:
                        session.execute(_SEEN, [{"site_id": s, "at": at} for s, at in seen.items()])
                    session.commit()
            except BaseException:
                with self._lock:  # keep them: the earliest delivery and the sum of bytes
                    for task_id, at in delivered.items():
                        self._delivered[task_id] = min(at, self._delivered.get(task_id, at))
                    for task_id, size in served.items():
                        self._served[task_id] = self._served.get(task_id, 0) + size
                    for site_id, at in seen.items():  # the latest visit
                        self._seen[site_id] = max(at, self._seen.get(site_id, at))
                raise
            return len(delivered) + len(served) + len(seen)

    def close(self) -> None:
        """Stop the background writer and write what is left."""
        self._closed = True
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
        self.flush()

    def _kick(self) -> None:
        if self._thread is None and not self._closed:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="fedseg-bookkeeping", daemon=True
                    )
                    self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait()
            if self._closed:
                return
            self._wake.clear()
            if self._stop.wait(self._interval_s):  # let the round's notes gather
                return  # close() writes what is left
            try:
                self.flush()
            except Exception as exc:  # the database is away: the notes wait for the next try
                log.warning("task bookkeeping not written yet: %s", type(exc).__name__)
                self._wake.set()
                self._stop.wait(1.0)
