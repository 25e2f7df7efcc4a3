"""Token → principal answers kept in memory, so a site's requests skip the token's database lookup.

A site sends its bearer token with every request: a long poll, the model download, the upload,
the next poll. Looking the token up each time cost a worker-thread hand-over, a session, a
``SELECT`` and a commit (issue 20's profile). ``PrincipalCache`` remembers a successful lookup,
keyed by the token's sha256, and the dependencies in ``aggregator.api.deps`` ask it first.

What still holds:

- **Revocation and rotation act at once.** ``aggregator.crud.principals`` marks the session
  that revokes or rotates a token (``principals.mark_changed``); when that session commits,
  the cache is emptied (``watch``). A lookup that read the database before the commit cannot
  put its stale answer back afterwards: every answer carries the cache's generation from
  before its read, and ``put`` drops an answer whose generation is no longer current.
- **Expiry** (``token_ttl_days``) is judged on every request from the cached issue time.
- **last_seen_at** does not depend on the cache: every site request notes the visit with the
  task bookkeeping (``TaskBookkeeping.seen``), written in batches, at most every 30 s per site.
- An answer is used for ``refresh_s`` (30 s); the next request reads the token again (a read,
  no write).
- Other processes' changes: on SQLite there are none (one process by design), and
  ``create_app`` enables the cache. On PostgreSQL another aggregator process sharing the
  database may revoke a token: there the cache is on only while
  ``aggregator.api.announcements`` listens for the changes every process announces, and it is
  emptied on each one.

Failed lookups are never cached: every refusal goes to the database and counts against the
caller's address and token (``guard_auth``).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from aggregator.crud.principals import TOKENS_CHANGED


@dataclass(frozen=True)
class CachedPrincipal:
    """A token's owner as the database said.

    Attributes:
        kind: ``"site"`` or ``"researcher"``.
        id: the principal's id.
        name: its name.
        issued_at: when its token was issued (for the token TTL).
        fresh_until: ``time.monotonic()`` after which the answer is not used.
    """

    kind: str
    id: str
    name: str
    issued_at: datetime | None
    fresh_until: float


class PrincipalCache:
    """Successful token lookups by token hash, emptied when a token changes.

    Args:
        enabled: False: ``get`` always misses and ``put`` keeps nothing.
        refresh_s: how long an answer is used unless ``fresh_until`` says otherwise. Default
            30.
        max_entries: the oldest answers are dropped beyond this. Default 100,000.
    """

    def __init__(
        self, *, enabled: bool = True, refresh_s: float = 30.0, max_entries: int = 100_000
    ) -> None:
        self.enabled = enabled
        self.refresh_s = refresh_s
        self.max_entries = max_entries
        self._entries: OrderedDict[str, CachedPrincipal] = OrderedDict()
        self._generation = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def generation(self) -> int:
        """Read before a database lookup; hand it to ``put`` with the answer."""
        return self._generation

    def get(self, token_hash: str, kind: str) -> CachedPrincipal | None:
        """The cached owner of a token, if fresh and of ``kind``."""
        if not self.enabled:
            return None
        entry = self._entries.get(token_hash)
        if entry is None or entry.kind != kind or time.monotonic() >= entry.fresh_until:
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, token_hash: str, entry: CachedPrincipal, *, generation: int) -> None:
        """Remember an answer read from the database under ``generation``.

        Dropped when a token changed since (the answer may predate a revocation).
        """
        if not self.enabled:
            return
        with self._lock:
            if generation != self._generation:
                return
            self._entries[token_hash] = entry
            self._entries.move_to_end(token_hash)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every answer and start a new generation."""
        with self._lock:
            self._generation += 1
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def watch(self, factory: sessionmaker[Session]) -> None:
        """Empty the cache whenever a session of ``factory`` commits a token change."""

        def after_commit(session: Session) -> None:
            if session.info.pop(TOKENS_CHANGED, False):
                self.clear()

        def after_rollback(session: Session) -> None:
            session.info.pop(TOKENS_CHANGED, None)

        event.listen(factory, "after_commit", after_commit)
        event.listen(factory, "after_rollback", after_rollback)
