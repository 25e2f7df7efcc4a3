"""What other aggregator processes sharing a PostgreSQL database commit, heard at once.

Several processes may serve one PostgreSQL database (``docs/aggregator-operations.md``). Two
things one of them commits, the others must hear of without asking the database again and
again (``aggregator.crud.announcements`` queues the ``NOTIFY`` in the committing transaction):

- **A token changed** (revoked, rotated, issued): each process answers known tokens from memory
  (``aggregator.api.principal_cache``); a token revoked through one process must be refused by
  all. Without this the cache had to stay off on PostgreSQL, and every request of every site
  paid for a session, a ``SELECT`` and a commit: at a thousand sites a quarter of the
  aggregator's Python time (issue 20's profile).
- **Tasks appeared** (a round opened, an experiment resumed): the leader wakes its own waiting
  long polls; a follower used to wake all of its waiting sites every orchestrator tick to look
  in the database again (one query per site per second), and a task reached them up to a tick
  late. Now they are woken when the leader commits.

``AnnouncementListener`` keeps one connection of its own that ``LISTEN``s on both channels, in
a thread. The cache is used, and the followers' per-tick wake-ups are skipped, only while that
connection is known to hear:

- the cache is switched on once ``LISTEN`` has succeeded (and emptied then: nothing read before
  can be trusted);
- it is switched off, and emptied, the moment the connection fails (a database restart, a
  failover, a network cut), and stays off until a new connection listens; waiting sites are
  woken then too, in case tasks were announced meanwhile;
- the connection is checked every ``check_s`` with a ``SELECT 1`` even when nothing arrives,
  so a connection that died silently is noticed within that time.

What is left: a change committed in the last ``check_s`` before a silent connection loss is
noticed may be missed by this process until then; a site's token answer is used at most until
its ``last_seen_at`` is 30 s old anyway (then the database is asked again), and followers still
wake their waiting sites every ``FOLLOWER_SAFETY_TICKS`` ticks (``aggregator.leadership``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable
from typing import Any

from aggregator.api.principal_cache import PrincipalCache
from aggregator.crud.announcements import TASKS_CHANNEL, TOKENS_CHANNEL
from aggregator.logs import log_event
from aggregator.storage.db import Database

log = logging.getLogger("aggregator.announcements")


class AnnouncementListener:
    """Hear token changes and new tasks committed by any process (PostgreSQL only).

    Args:
        cache: the process's principal cache; switched on while listening, off otherwise, and
            emptied on every token change.
        database: the shared PostgreSQL database.
        on_tasks: called (from the listener's thread) when tasks were announced, and when the
            connection was lost. Example: ``board.wake_all_threadsafe``.
        check_s: seconds between liveness checks of the listening connection. Default 5.0.
        retry_s: seconds between attempts to listen again after a failure. Default 1.0.
    """

    def __init__(
        self,
        cache: PrincipalCache,
        database: Database,
        *,
        on_tasks: Callable[[], None] = lambda: None,
        check_s: float = 5.0,
        retry_s: float = 1.0,
    ) -> None:
        self._cache = cache
        self._db = database
        self._on_tasks = on_tasks
        self._check_s = check_s
        self._retry_s = retry_s
        self._stop = threading.Event()
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()
        self.heard: dict[str, int] = {TOKENS_CHANNEL: 0, TASKS_CHANNEL: 0}  # by channel
        self.connected = 0  # times it started listening
        self.failures = 0  # times its connection failed

    def start(self) -> None:
        """Start listening in a daemon thread (the cache switches on once it listens)."""
        self._cache.enabled = False
        self._stop.clear()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="announcements", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and switch the cache off; returns once the connection is closed."""
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._switch_off()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as exc:  # the database's or the driver's: listen again shortly
                if self._stop.is_set():
                    break
                self._switch_off()
                self.failures += 1
                log_event(
                    log,
                    "announcements.lost",
                    level=logging.WARNING,
                    error=type(exc).__name__,
                    retry_s=self._retry_s,
                )
                self._on_tasks()  # anything announced meanwhile is unheard: look again
                self._stop.wait(self._retry_s)

    def _listen(self) -> None:
        raw = self._db.engine.raw_connection()
        conn: Any = raw.driver_connection
        raw.detach()  # closed for real at the end, never back into the pool while listening
        try:
            conn.autocommit = True
            conn.execute(f"LISTEN {TOKENS_CHANNEL}")
            conn.execute(f"LISTEN {TASKS_CHANNEL}")
            self._cache.clear()  # anything read before now may predate a change
            self._cache.enabled = True
            self.connected += 1
            self.listening.set()
            log_event(log, "announcements.listening")
            while not self._stop.is_set():
                ready, _, _ = select.select([conn.fileno(), self._wake_r], [], [], self._check_s)
                if self._wake_r in ready:
                    return
                if ready:
                    self._dispatch({n.channel for n in conn.notifies(timeout=0.0)})
                else:
                    conn.execute("SELECT 1")  # quiet: is the connection still there?
        finally:
            self._switch_off()
            with contextlib.suppress(Exception):
                raw.close()

    def _dispatch(self, channels: set[str]) -> None:
        for channel in channels:
            self.heard[channel] = self.heard.get(channel, 0) + 1
        if TOKENS_CHANNEL in channels:
            self._cache.clear()
        if TASKS_CHANNEL in channels:
            self._on_tasks()

    def _switch_off(self) -> None:
        self.listening.clear()
        self._cache.enabled = False
        self._cache.clear()
