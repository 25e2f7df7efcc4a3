"""SQLite writers of one process queue on a lock, from their first write to their commit."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from aggregator.storage.db import Database
from aggregator.storage.db.sqlite_writer import connection_class, starts_write, writer_lock


def _connect(path: Path, timeout_s: float = 30.0) -> sqlite3.Connection:
    cls = connection_class(str(path), timeout_s=timeout_s)
    conn = sqlite3.connect(path, factory=cls, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "w.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
    conn.execute("INSERT INTO t VALUES (1, 0)")
    conn.commit()
    conn.close()
    return path


def test_what_begins_a_write() -> None:
    assert starts_write("  update t set n = 1")
    assert starts_write("INSERT INTO t VALUES (2, 0)")
    assert starts_write("BEGIN IMMEDIATE")
    assert starts_write("CREATE TABLE x (a)")
    assert not starts_write("SELECT * FROM t")
    assert not starts_write("PRAGMA synchronous=NORMAL")
    assert not starts_write("SAVEPOINT sa_1")


def test_the_lock_is_held_from_the_first_write_to_the_commit_or_rollback(db_path: Path) -> None:
    lock = writer_lock(str(db_path))
    conn = _connect(db_path)
    conn.execute("SELECT n FROM t").fetchall()
    assert not lock.locked()  # a read takes nothing
    conn.execute("UPDATE t SET n = n + 1")
    assert lock.locked() and conn.in_transaction
    conn.execute("SELECT n FROM t").fetchall()
    assert lock.locked()  # still inside the write
    conn.commit()
    assert not lock.locked()
    conn.execute("UPDATE t SET n = n + 1")
    conn.rollback()
    assert not lock.locked()
    conn.execute("UPDATE t SET n = n + 1")
    conn.close()  # closing with an open write hands the lock on too
    assert not lock.locked()


def test_a_failed_first_write_leaves_the_lock_free(db_path: Path) -> None:
    conn = _connect(db_path)
    conn.isolation_level = None  # autocommit: the failed statement leaves no transaction
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO t VALUES (1, 0)")
    assert not writer_lock(str(db_path)).locked()
    conn.close()


def test_a_writer_that_cannot_get_the_lock_in_time_fails_like_sqlite(db_path: Path) -> None:
    first, second = _connect(db_path), _connect(db_path, timeout_s=0.2)
    first.execute("UPDATE t SET n = 5")
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        second.execute("UPDATE t SET n = 6")
    first.commit()
    second.execute("UPDATE t SET n = 6")  # free again
    second.commit()
    assert first.execute("SELECT n FROM t").fetchone() == (6,)
    first.close()
    second.close()


def test_concurrent_writers_lose_nothing_and_never_wait_on_sqlite(db_path: Path) -> None:
    conns = [_connect(db_path) for _ in range(6)]
    for conn in conns:
        conn.execute("PRAGMA busy_timeout=0")  # SQLite's own waiting is off: a clash would fail
    errors: list[BaseException] = []

    def work(conn: sqlite3.Connection) -> None:
        try:
            for _ in range(50):
                conn.execute("UPDATE t SET n = n + 1")
                conn.commit()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert conns[0].execute("SELECT n FROM t").fetchone() == (300,)
    for conn in conns:
        conn.close()


def test_the_engine_connects_with_it_and_engines_on_one_file_share_the_lock(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    one, two = Database(url), Database(url)
    one.upgrade()
    with one.engine.connect() as a, two.engine.connect() as b:
        raw_a, raw_b = a.connection.dbapi_connection, b.connection.dbapi_connection
        assert type(raw_a)._writer_lock is type(raw_b)._writer_lock  # type: ignore[union-attr]
        a.execute(text("UPDATE researchers SET name = name"))
        assert writer_lock(str(tmp_path / "a.db")).locked()
        a.commit()
        assert not writer_lock(str(tmp_path / "a.db")).locked()
    one.dispose()
    two.dispose()
