"""Ping a pooled PostgreSQL connection when it comes back from being idle, not at every checkout.

SQLAlchemy's ``pool_pre_ping`` sends a ``SELECT 1`` each time a connection leaves the pool, so
that one a database restart (or failover) closed is replaced instead of failing a request. At a
thousand sites a round checks a connection out about seven thousand times, and each ping was a
socket round trip with its thread wake-ups (issue 20's profile: 4 % of the process's Python time
on PostgreSQL, before the wait).

A connection checked in a moment ago is as alive as one that was just pinged. ``install`` pings
only a connection that sat in the pool for ``idle_s`` or more: under load the pool's connections
come back within milliseconds and are never pinged; after a quiet spell, each is pinged once.
What a restart does to connections in use mid-request is unchanged: SQLAlchemy sees the
disconnect error, and invalidates the whole pool, so the next checkouts connect afresh.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError

IDLE_PING_S = 2.0
"""A connection idle in the pool this long or more is pinged when it is next checked out."""

_IDLE_SINCE = "fedseg.idle_since"


def install(engine: Engine, *, idle_s: float | None = None) -> None:
    """Ping ``engine``'s pooled connections that were idle for ``idle_s`` or more at checkout.

    A dead connection is discarded and the pool checks out another (SQLAlchemy retries a
    checkout that raises ``DisconnectionError``), as with ``pool_pre_ping``.

    Args:
        engine: an engine without ``pool_pre_ping``.
        idle_s: seconds in the pool after which a connection is pinged. Default None:
            ``IDLE_PING_S`` (2.0) as it is at each checkout; 0 pings every checkout
            (``pool_pre_ping``'s behaviour).
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        threshold = IDLE_PING_S if idle_s is None else idle_s
        if since is None or time.monotonic() - since < threshold:
            return  # just connected, or back from work a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the driver's own error: the connection is gone
            raise DisconnectionError("a pooled connection did not answer its ping") from exc
