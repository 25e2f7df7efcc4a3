"""What opening a round of N tasks costs the aggregator: its tasks as rows, or as ORM objects.

``python -m benchmarks.round_open_bench [--sites 1000] [--repeats 3] [--databases sqlite
postgresql]`` writes ``benchmarks/results/round_open.md`` (``--out``): the CPU milliseconds (and wall) of the transaction that
opens one round of N tasks, on SQLite and on a PostgreSQL server it starts (the test tier's
``PostgresServer``; skipped with a message when it cannot start). Two ways, alternated:

- ``rows``: ``aggregator.crud.rounds.create_round`` as it is (one bulk ``INSERT`` of N rows);
- ``orm objects``: the same round with one ``Task`` object per site added to the session (the
  unit of work the code used before), for comparison.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aggregator.crud.rounds import create_round
from aggregator.storage.db import Database, Round, Task
from aggregator.storage.db.models import utcnow
from tests.aggregator.db_rows import EXPERIMENT_ID, seed_federation
from tests.aggregator.postgres import PostgresServer, PostgresUnavailable

RESULTS = Path(__file__).parent / "results"


def _round(ids: list[str], number: int) -> dict[str, Any]:
    """The round's own fields, the same for both ways."""
    now = utcnow()
    return {
        "experiment_id": EXPERIMENT_ID,
        "number": number,
        "attempt": 0,
        "sampled": ids,
        "opened_at": now,
        "deadline_at": now + timedelta(minutes=5),
    }


def _rows(db: Database, ids: list[str], number: int) -> None:
    with db.session() as session:
        create_round(
            session,
            **_round(ids, number),
            seeds=dict.fromkeys(ids, 1),
            model_sha256="f" * 64,
            model_size=10,
        )
        session.commit()


def _orm_objects(db: Database, ids: list[str], number: int) -> None:
    with db.session() as session:
        rnd = Round(**_round(ids, number))
        session.add(rnd)
        session.flush()
        for site_id in ids:
            session.add(
                Task(
                    round_id=rnd.id,
                    experiment_id=EXPERIMENT_ID,
                    site_id=site_id,
                    round_number=number,
                    seed=1,
                    model_sha256="f" * 64,
                    model_size=10,
                    created_at=rnd.opened_at,
                )
            )
        session.commit()


def bench(url: str, label: str, sites: int, repeats: int) -> list[str]:
    db = Database(url)
    db.upgrade()
    ids = seed_federation(db, sites)
    ways: list[tuple[str, Callable[[Database, list[str], int], None]]] = [
        ("rows", _rows),
        ("orm objects", _orm_objects),
    ]
    rows: list[str] = []
    number = 0
    for _ in range(repeats):
        for name, way in ways:
            number += 1
            cpu, wall = time.process_time(), time.perf_counter()
            way(db, ids, number)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            rows.append(f"| {label} | {sites} | {name} | {1000 * cpu:.0f} | {1000 * wall:.0f} |")
    db.dispose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--out", type=Path, default=RESULTS / "round_open.md")
    args = parser.parse_args()
    lines = [
        "# Opening a round: its tasks as rows or as ORM objects",
        "",
        f"`python -m benchmarks.round_open_bench --sites {args.sites} --repeats {args.repeats}`"
        f" ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {_commit()}, {platform.node()},"
        f" {os.cpu_count()} CPUs). CPU and wall of the transaction that opens one round; the two"
        " ways alternate. `rows` is the code's `create_round`.",
        "",
        "| database | tasks | way | CPU ms | wall ms |",
        "|---|---|---|---|---|",
    ]
    if "sqlite" in args.databases:
        with tempfile.TemporaryDirectory() as tmp:
            lines += bench(f"sqlite:///{tmp}/agg.db", "sqlite", args.sites, args.repeats)
    if "postgresql" in args.databases:
        server = PostgresServer()
        try:
            server.start()
        except PostgresUnavailable as exc:
            lines += ["", f"PostgreSQL could not start ({exc}): its rows are left out."]
        else:
            lines += bench(server.database_url(), "postgresql", args.sites, args.repeats)
        finally:
            server.stop()
    text = "\n".join(lines) + "\n"
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.write_text(text)
    tmp_out.replace(args.out)
    print(f"report written to {args.out}")


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


if __name__ == "__main__":
    main()
