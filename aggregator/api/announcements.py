"""What other aggregator processes sharing a PostgreSQL database commit, heard at once.

Several processes may serve one PostgreSQL database (``docs/aggregator-operations.md``). Three
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
- **A round's last report** (its ``round_progress`` reached 0): whichever process took it, the
  leader's orchestrator steps at once and closes the round. Before, a round whose last upload
  reached a follower closed at the leader's next tick (up to ``orchestrator_interval_s``). The
  process that took the report does not also wake its own orchestrator while it listens: it
  hears its own announcement (``routes.tasks``).

``AnnouncementListener`` keeps one connection of its own that ``LISTEN``s on these channels, in
a thread. The cache is used, and the followers' per-tick wake-ups are skipped, only while that
connection is known to hear:

- the cache is switched on once ``LISTEN`` has succeeded and a probe sent through another
  connection (``fedseg_probe``, a random payload) came back on this one within ``probe_s``
  (and emptied then: nothing read before can be trusted). A proxy that accepts ``LISTEN``
  without delivering (PgBouncer in transaction pooling mode) fails the probe: the cache stays
  off, and the process logs ``announcements.lost`` and tries again, less and less often (up to
  once a minute);
- it is switched off, and emptied, the moment the connection fails (a database restart, a
  failover, a network cut), and stays off until a new connection listens; waiting sites are
  woken then too, in case tasks were announced meanwhile;
- the connection is checked every ``check_s`` with a ``SELECT 1`` even when nothing arrives,
  so a connection that died silently is noticed within that time.

What is left: a change committed in the last ``check_s`` before a silent connection loss is
noticed may be missed by this process until then; a token's answer is used at most 30 s anyway
(``PrincipalCache.refresh_s``; then the database is asked again), and followers still
wake their waiting sites every ``FOLLOWER_SAFETY_TICKS`` ticks (``aggregator.leadership``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import func
from sqlalchemy import select as sql_select

from aggregator.api.principal_cache import PrincipalCache
from aggregator.crud.announcements import ROUNDS_CHANNEL, TASKS_CHANNEL, TOKENS_CHANNEL
from aggregator.logs import log_event
from aggregator.storage.db import Database

log = logging.getLogger("aggregator.announcements")

PROBE_CHANNEL = "fedseg_probe"
"""Each process checks, on its own channel traffic, that announcements really reach it."""

MAX_RETRY_S = 60.0


class AnnouncementsNotDelivered(RuntimeError):
    """``LISTEN`` was accepted, but a notification sent through another connection never came."""


class AnnouncementListener:
    """Hear token changes and new tasks committed by any process (PostgreSQL only).

    Args:
        cache: the process's principal cache; switched on while listening, off otherwise, and
            emptied on every token change.
        database: the shared PostgreSQL database.
        on_tasks: called (from the listener's thread) when tasks were announced, and when the
            connection was lost. Example: ``board.wake_all_threadsafe``.
        on_rounds: called (from the listener's thread) when a round's last report was
            committed, by any process, this one included, and when the connection was lost.
            Example: ``orchestrator.wake``.
        check_s: seconds between liveness checks of the listening connection. Default 5.0.
        retry_s: seconds before listening again after a failure; doubled after each failure
            in a row, up to 60. Default 1.0.
        probe_s: how long the delivery probe may take. Default 5.0.
    """

    def __init__(
        self,
        cache: PrincipalCache,
        database: Database,
        *,
        on_tasks: Callable[[], None] = lambda: None,
        on_rounds: Callable[[], None] = lambda: None,
        check_s: float = 5.0,
        retry_s: float = 1.0,
        probe_s: float = 5.0,
    ) -> None:
        self._cache = cache
        self._db = database
        self._on_tasks = on_tasks
        self._on_rounds = on_rounds
        self._check_s = check_s
        self._retry_s = retry_s
        self._probe_s = probe_s
        self._stop = threading.Event()
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()
        self.heard: dict[str, int] = {TOKENS_CHANNEL: 0, TASKS_CHANNEL: 0, ROUNDS_CHANNEL: 0}
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
        in_a_row = 0
        while not self._stop.is_set():
            connected = self.connected
            try:
                self._listen()
            except Exception as exc:  # the database's or the driver's: listen again shortly
                if self._stop.is_set():
                    break
                self._switch_off()
                self.failures += 1
                in_a_row = 0 if self.connected > connected else in_a_row + 1
                retry_s = min(MAX_RETRY_S, self._retry_s * 2 ** max(0, in_a_row - 1))
                log_event(
                    log,
                    "announcements.lost",
                    level=logging.WARNING,
                    error=type(exc).__name__,
                    retry_s=retry_s,
                )
                self._on_tasks()  # anything announced meanwhile is unheard: look again
                self._on_rounds()
                self._stop.wait(retry_s)

    def _listen(self) -> None:
        raw = self._db.engine.raw_connection()
        conn: Any = raw.driver_connection
        raw.detach()  # closed for real at the end, never back into the pool while listening
        try:
            conn.autocommit = True
            for channel in (TOKENS_CHANNEL, TASKS_CHANNEL, ROUNDS_CHANNEL, PROBE_CHANNEL):
                conn.execute(f"LISTEN {channel}")
            self._probe(conn)
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

    def _probe(self, conn: Any) -> None:
        """Send a random payload through a pooled connection; wait for it on ``conn``.

        Raises:
            AnnouncementsNotDelivered: it did not come within ``probe_s``.
        """
        payload = secrets.token_hex(8)
        self._send_probe(payload)
        give_up = time.monotonic() + self._probe_s
        heard: set[str] = set()
        while (left := give_up - time.monotonic()) > 0:
            for note in conn.notifies(timeout=min(left, 0.5)):
                if note.channel == PROBE_CHANNEL and note.payload == payload:
                    self._dispatch(heard)
                    return
                heard.add(note.channel)
            if self._stop.is_set():
                break
        self._dispatch(heard)
        raise AnnouncementsNotDelivered(
            f"a probe sent through another connection did not arrive within {self._probe_s} s"
        )

    def _send_probe(self, payload: str) -> None:
        with self._db.engine.connect() as sender:
            sender.execute(sql_select(func.pg_notify(PROBE_CHANNEL, payload)))
            sender.commit()

    def _dispatch(self, channels: set[str]) -> None:
        if TOKENS_CHANNEL in channels:
            self._cache.clear()
        if TASKS_CHANNEL in channels:
            self._on_tasks()
        if ROUNDS_CHANNEL in channels:
            self._on_rounds()
        for channel in channels:  # counted once acted on: a reader of ``heard`` sees the effect
            self.heard[channel] = self.heard.get(channel, 0) + 1

    def _switch_off(self) -> None:
        self.listening.clear()
        self._cache.enabled = False
        self._cache.clear()
