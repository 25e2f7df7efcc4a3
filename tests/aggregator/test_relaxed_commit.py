"""Relaxed commits: bookkeeping skips the fsync, everything else keeps synchronous=FULL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select, text

from aggregator.storage.db import Database
from aggregator.storage.db.models import Researcher
from aggregator.storage.db.relaxed import relax_next_commit

FULL, NORMAL = 2, 1  # PRAGMA synchronous answers


def _level(session: Any) -> int:
    return int(session.execute(text("PRAGMA synchronous")).scalar_one())


def test_a_relaxed_commit_is_normal_then_the_pool_gets_full_back(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'a.db'}", synchronous="FULL")
    db.create_all()
    with db.session() as session:
        session.execute(select(Researcher)).all()  # a read does not start a write transaction
        assert relax_next_commit(session) is True
        assert _level(session) == NORMAL
        session.add(Researcher(name="r1", token_hash="h1"))
        session.commit()
    for _ in range(3):  # whichever pooled connection comes next, it is FULL again
        with db.session() as session:
            assert _level(session) == FULL
            assert session.scalars(select(Researcher.name)).all() == ["r1"]
    db.dispose()


def test_a_session_that_already_wrote_keeps_its_full_commit(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'b.db'}", synchronous="FULL")
    db.create_all()
    with db.session() as session:
        session.add(Researcher(name="r2", token_hash="h2"))
        session.flush()  # the write transaction has begun
        assert relax_next_commit(session) is False
        assert _level(session) == FULL
        session.commit()
    db.dispose()
