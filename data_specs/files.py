"""Atomic file writes: temp file in the same folder, fsync, rename. Readers never see half a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_writer(
    path: str | Path, *, mode: int = 0o644, durable: bool = True
) -> Iterator[IO[bytes]]:
    """Open a binary temp file that replaces ``path`` only if the block finishes.

    Args:
        path: destination. Its folder must exist.
        mode: permission bits of the final file. Default ``0o644``; use ``0o600`` for secrets.
        durable: fsync the file and its folder, so the new file survives a power cut. Default
            True. False still replaces atomically (a ``kill -9`` never leaves half a file):
            for records whose loss in a power cut only repeats work.

    Yields:
        A writable binary file object. On any exception the temp file is removed and ``path``
        is left as it was (a full disk never leaves a truncated file behind).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(
    path: str | Path, data: bytes | memoryview, *, mode: int = 0o644, durable: bool = True
) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_writer``)."""
    with atomic_writer(path, mode=mode, durable=durable) as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str, *, mode: int = 0o644) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def fsync_file(path: str | Path) -> None:
    """Make a finished file's bytes durable (one written with ``durable=False``).

    Raises:
        OSError: the file cannot be opened or the fsync failed (e.g. ``ENOSPC``, ``EIO``).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | Path) -> None:
    """Make a rename into ``folder`` durable (kill -9 or power loss right after ``os.replace``).

    Best effort: file systems that cannot fsync a folder are skipped silently.
    """
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
