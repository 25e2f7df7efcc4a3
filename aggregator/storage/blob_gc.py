"""Garbage collection of blobs no database row names (refused uploads' leftovers, old copies).

Safe by construction, so that nothing referenced is ever removed, crash included:

- the set of referenced blobs is read from every column that names one (initial models, global
  models and their float16 copies and server states, task models and updates, personal models);
- only blobs *older* than ``grace_s`` are candidates: an upload is stored as a blob first and
  named by a row in the next transaction, so a blob a crash left between the two steps, or one
  being committed right now, is kept; a later run (after the grace) removes it only if no row
  names it by then;
- it runs with the service stopped (``fedseg aggregator gc``), because routing bundles are cached
  in the running service's memory and named by no row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.storage.blobs import BlobStore, is_sha256
from aggregator.storage.db import Experiment, GlobalModel, PersonalModel, Task

DEFAULT_GRACE_S = 24 * 3600.0


@dataclass(frozen=True)
class GcReport:
    """What a collection did.

    Attributes:
        kept: blobs kept (referenced, or younger than the grace period).
        removed: blobs removed.
        freed_bytes: their total size.
    """

    kept: int
    removed: int
    freed_bytes: int


def referenced_blobs(session: Session) -> set[str]:
    """Every sha256 a database row names."""
    columns = (
        Experiment.initial_model_sha256,
        GlobalModel.sha256,
        GlobalModel.f16_sha256,
        GlobalModel.state_sha256,
        Task.model_sha256,
        Task.update_sha256,
        Task.update_blob_sha256,
        PersonalModel.sha256,
    )
    out: set[str] = set()
    for column in columns:
        out.update(v for v in session.scalars(select(column).distinct()) if v)
    return out


def collect(
    session: Session, blobs: BlobStore, *, grace_s: float = DEFAULT_GRACE_S, dry_run: bool = False
) -> GcReport:
    """Remove blobs no row names and older than ``grace_s`` seconds.

    Args:
        session: a session on the aggregator's database.
        blobs: the blob store.
        grace_s: keep blobs modified within this many seconds. Default one day.
        dry_run: count only.

    Returns:
        The report.
    """
    keep = referenced_blobs(session)
    cutoff = time.time() - grace_s
    kept = removed = freed = 0
    for path in _blob_files(blobs.root):
        sha = path.parent.name + path.name
        stat = path.stat()
        if sha in keep or stat.st_mtime > cutoff:
            kept += 1
            continue
        if not dry_run:
            path.unlink(missing_ok=True)
        removed += 1
        freed += stat.st_size
    return GcReport(kept, removed, freed)


def _blob_files(root: Path) -> list[Path]:
    return [
        p
        for folder in root.iterdir()
        if folder.is_dir() and len(folder.name) == 2
        for p in folder.iterdir()
        if p.is_file() and is_sha256(folder.name + p.name)
    ]
