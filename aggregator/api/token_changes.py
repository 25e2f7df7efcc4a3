"""Token changes from every aggregator process sharing a PostgreSQL database, heard at once.

The principal cache (``aggregator.api.principal_cache``) answers a site's token from memory.
On SQLite one process owns the database, and a revocation empties the cache when it commits.
On PostgreSQL several processes may serve one database, and a token revoked through one must be
refused by all of them. Without that, the cache had to stay off there, and every request of
every site paid for a session, a ``SELECT`` and a commit: at a thousand sites, a quarter of the
aggregator's Python time on PostgreSQL (issue 20's profile).

A revocation, rotation or enrolment commits with a ``NOTIFY fedseg_tokens``
(``aggregator.crud.principals.mark_changed``). ``TokenChangeListener`` keeps one connection
of its own that ``LISTEN``s on the channel, in a thread, and empties the cache on every
notification. PostgreSQL delivers a notification once its transaction commits, to every
listening connection.

The cache is used only while the listener is known to hear:

- it is switched on once ``LISTEN`` has succeeded (the cache is emptied then: nothing read
  before can be trusted);
- it is switched off, and emptied, the moment the connection fails (a database restart, a
  failover, a network cut), and stays off until a new connection listens again;
- the connection is checked every ``check_s`` with a ``SELECT 1`` even when nothing arrives,
  so a connection that died silently is noticed within that time.

What is left: a revocation committed in the last ``check_s`` before a silent connection loss
is noticed may be missed by this process until then; and a site's answer is used at most until
its ``last_seen_at`` is 30 s old anyway (then the database is asked again).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from typing import Any

from aggregator.api.principal_cache import PrincipalCache
from aggregator.crud.principals import TOKENS_CHANNEL
from aggregator.logs import log_event
from aggregator.storage.db import Database

log = logging.getLogger("aggregator.token_changes")


class TokenChangeListener:
    """Empty a principal cache whenever any process commits a token change (PostgreSQL only).

    Args:
        cache: the process's principal cache; switched on while listening, off otherwise.
        database: the shared PostgreSQL database.
        check_s: seconds between liveness checks of the listening connection. Default 5.0.
        retry_s: seconds between attempts to listen again after a failure. Default 1.0.
    """

    def __init__(
        self,
        cache: PrincipalCache,
        database: Database,
        *,
        check_s: float = 5.0,
        retry_s: float = 1.0,
    ) -> None:
        self._cache = cache
        self._db = database
        self._check_s = check_s
        self._retry_s = retry_s
        self._stop = threading.Event()
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()
        self.notifications = 0  # heard, in all
        self.connected = 0  # times it started listening
        self.failures = 0  # times its connection failed

    def start(self) -> None:
        """Start listening in a daemon thread (the cache switches on once it listens)."""
        self._cache.enabled = False
        self._stop.clear()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="token-changes", daemon=True)
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
                    "token_changes.lost",
                    level=logging.WARNING,
                    error=type(exc).__name__,
                    retry_s=self._retry_s,
                )
                self._stop.wait(self._retry_s)

    def _listen(self) -> None:
        raw = self._db.engine.raw_connection()
        conn: Any = raw.driver_connection
        raw.detach()  # closed for real at the end, never back into the pool while listening
        try:
            conn.autocommit = True
            conn.execute(f"LISTEN {TOKENS_CHANNEL}")
            self._cache.clear()  # anything read before now may predate a change
            self._cache.enabled = True
            self.connected += 1
            self.listening.set()
            log_event(log, "token_changes.listening")
            while not self._stop.is_set():
                ready, _, _ = select.select([conn.fileno(), self._wake_r], [], [], self._check_s)
                if self._wake_r in ready:
                    return
                if ready:
                    heard = sum(1 for _ in conn.notifies(timeout=0.0))
                    if heard:
                        self.notifications += heard
                        self._cache.clear()
                else:
                    conn.execute("SELECT 1")  # quiet: is the connection still there?
        finally:
            self._switch_off()
            with contextlib.suppress(Exception):
                raw.close()

    def _switch_off(self) -> None:
        self.listening.clear()
        self._cache.enabled = False
        self._cache.clear()
