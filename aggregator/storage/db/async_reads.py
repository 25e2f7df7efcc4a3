"""A site's per-round look-ups on PostgreSQL, run on the event loop (psycopg's asyncio connections).

On PostgreSQL each look-up of a site's poll and upload was a hand-over to a database thread and
back, around a SQLAlchemy session, a pooled connection and a result object: about 0.6 ms of CPU
for a one-row ``SELECT``, against 0.12 ms for the same statement sent by psycopg's
``AsyncConnection`` on the event loop (``benchmarks/results/scale.md``, section M). At a
thousand sites that is two look-ups per site and round.

``AsyncReads`` keeps a few autocommit ``AsyncConnection``s of its own and runs the module's
prepared Core statements (``aggregator.crud.site_requests``) on them: each statement is compiled
once to PostgreSQL's SQL, with its constants as parameters, and psycopg prepares it on the
server after a few runs. Rows come back as dicts, ``UTCDateTime`` columns as aware UTC
datetimes as ``aggregator.storage.db.models.UTCDateTime`` gives them.

Only reads go here: nothing is written, so a statement that failed on a connection the server
closed (a restart, a failover) is run once more on a new connection. The connections belong to
the event loop that opened them; used from another loop (a second test client), they are
dropped and opened anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.sql import Select

if TYPE_CHECKING:  # imported when one is built: a SQLite aggregator starts without psycopg
    import psycopg

log = logging.getLogger("aggregator.storage.db.async_reads")

APPLICATION_NAME = "fedseg-async-reads"  # in pg_stat_activity


class SiteReads(Protocol):
    """A site's one-row look-ups on the event loop: ``AsyncReads`` (PostgreSQL) or
    ``aggregator.storage.db.sqlite_reads.SqliteReads`` (a SQLite file)."""

    async def one(self, statement: Select[Any], params: dict[str, Any]) -> dict[str, Any] | None:
        """The first row of ``statement`` with ``params`` as a dict, or None."""

    async def close(self) -> None:
        """Close the connections (the app's shutdown)."""


@dataclass(frozen=True)
class _Compiled:
    sql: str
    constants: dict[str, Any]


class AsyncReads:
    """One-row reads on psycopg ``AsyncConnection``s (autocommit), at most ``size`` at once.

    Args:
        url: the SQLAlchemy URL of the PostgreSQL database
            (``postgresql+psycopg://user:password@host/name``).
        dialect: the engine's dialect (statements are compiled for it).
        size: connections kept; further reads wait for one. Default 4.
    """

    def __init__(self, url: str | URL, *, dialect: Dialect, size: int = 4) -> None:
        self._conninfo = (
            make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        import psycopg

        self._psycopg = psycopg
        self._dialect = dialect
        self._size = size
        self._compiled: dict[int, _Compiled] = {}
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._open = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._free: asyncio.Semaphore | None = None
        self.reconnects = 0

    async def one(self, statement: Select[Any], params: dict[str, Any]) -> dict[str, Any] | None:
        """The first row of ``statement`` with ``params`` as a dict, or None.

        Raises:
            psycopg.Error: the database refused it twice (or the statement is wrong).
        """
        compiled = self._compile(statement)
        values = compiled.constants | params
        free = self._semaphore()
        async with free:
            for attempt in (1, 2):
                conn = await self._connection()
                try:
                    cursor = await conn.execute(compiled.sql, values)
                    row = await cursor.fetchone()
                    names = [column.name for column in cursor.description or ()]
                except self._psycopg.OperationalError:
                    await self._discard(conn)
                    if attempt == 2:
                        raise
                    self.reconnects += 1
                    log.info("async_reads.reconnect")
                    continue
                except BaseException:  # cancelled mid-statement, or refused: not used again
                    await self._discard(conn)
                    raise
                self._idle.append(conn)
                return (
                    None if row is None else {n: _utc(v) for n, v in zip(names, row, strict=True)}
                )
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Close the connections (the app's shutdown)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.close()
        self._open = 0

    def _compile(self, statement: Select[Any]) -> _Compiled:
        found = self._compiled.get(id(statement))
        if found is None:
            compiled = statement.compile(dialect=self._dialect)
            found = _Compiled(str(compiled), dict(compiled.params))
            self._compiled[id(statement)] = found
        return found

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._free is None:  # another event loop: start afresh
            self._loop, self._free = loop, asyncio.Semaphore(self._size)
            self._idle, self._open = [], 0
        return self._free

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._idle:
            return self._idle.pop()
        conn = await self._psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, application_name=APPLICATION_NAME
        )
        self._open += 1
        return conn

    async def _discard(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._open -= 1
        with contextlib.suppress(Exception):
            await conn.close()


def _utc(value: Any) -> Any:
    """A naive timestamp as the aware UTC datetime ``UTCDateTime`` would give."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
