"""Content-addressed blob store on disk: ``blobs/ab/cdef...`` named by sha256, written atomically.

Writes go to ``blobs/tmp/``, are fsynced, then renamed into place (and the folder fsynced), so a
``kill -9`` never leaves a half-written blob under a real name. Uploads are staged chunk by chunk
while hashing; nothing is ever held whole in memory.

``verify`` re-hashes a blob before aggregation. A blob this process hashed itself (written by
it, or verified once) and whose file is still the same (inode, size and modification time, from
``stat``) is not read again: the round's updates were hashed as they arrived, seconds before.
Any other file is hashed, and so is every blob after a restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from aggregator.errors import StorageError
from data_specs.files import atomic_writer, fsync_dir

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_READ_CHUNK = 1 << 20
_KNOWN_MAX = 8192  # blobs remembered as hashed: a 1,000-site round's updates several times over


@dataclass(frozen=True)
class BlobRef:
    """A stored blob: its sha256 (hex) and size in bytes."""

    sha256: str
    size: int


def is_sha256(value: str) -> bool:
    """Whether ``value`` is 64 lowercase hex characters."""
    return bool(_SHA_RE.match(value))


class StagedBlob:
    """A blob being written: ``write`` chunks, then ``commit`` into the store or ``discard``.

    The staged file under ``tmp/`` is created by the first write (or ``finish``, or a read of
    ``path``), not here: a small upload is staged on the event loop and held in memory until a
    worker thread's ``finish``, so creating its file there would put a ``mkstemp`` (random
    names, an ``open`` with ``O_EXCL``) and, for a refused upload, an ``unlink`` on the event
    loop (at 1,000 sites 7 % of it; ``benchmarks/results/scale.md``, section R).

    Args:
        store: the store it belongs to.
    """

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._path: Path | None = None
        self._fh: BinaryIO | None = None
        self._gone = False  # moved into the store, or discarded
        self._hash = hashlib.sha256()
        self._held: list[bytes] = []
        self._written = 0
        self.body: bytes | None = None  # the whole body, when it was held and then written
        self.size = 0
        self._sha: str | None = None

    @property
    def path(self) -> Path:
        """The staged file (created empty if nothing was written yet)."""
        self._file()
        assert self._path is not None
        return self._path

    def _file(self) -> BinaryIO:
        if self._path is None:
            if self._gone:
                raise StorageError("the staged blob was discarded")
            fd, tmp = tempfile.mkstemp(prefix="stage.", suffix=".tmp", dir=self._store.tmp_dir)
            self._path = Path(tmp)
            self._fh = os.fdopen(fd, "wb")
        assert self._fh is not None
        return self._fh

    def write(self, chunk: bytes) -> None:
        """Append a chunk, hashing it on the way."""
        self.write_held()
        self.body = None  # more than what was held
        self._hash.update(chunk)
        self._file().write(chunk)
        self._written += len(chunk)
        self.size += len(chunk)

    def hold(self, chunk: bytes) -> None:
        """Hash a chunk now and keep it in memory; ``write_held`` or ``finish`` writes it.

        For small bodies: their bytes reach the file in the same worker-thread call that
        fsyncs it, instead of one hand-over per chunk.
        """
        self._hash.update(chunk)
        self._held.append(chunk)
        self.size += len(chunk)

    @property
    def held_bytes(self) -> int:
        """Bytes hashed but not yet written to the file."""
        return sum(len(c) for c in self._held)

    def write_held(self) -> None:
        """Write the chunks ``hold`` kept in memory (in order)."""
        if not self._held:
            return
        if self._written == 0:  # all of the body so far: keep it for readers
            self.body = b"".join(self._held)
            self._held = [self.body]
        fh = self._file()
        while self._held:
            chunk = self._held.pop(0)
            fh.write(chunk)
            self._written += len(chunk)

    def digest(self) -> BlobRef:
        """sha256 and size of everything written or held so far (the file may lag behind)."""
        return BlobRef(self._sha or self._hash.hexdigest(), self.size)

    def finish(self) -> BlobRef:
        """Write what is held, flush and fsync the staged file; returns its sha256 and size."""
        if self._sha is None:
            fh = self._file()
            self.write_held()
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            self._sha = self._hash.hexdigest()
        return BlobRef(self._sha, self.size)

    def commit(self) -> BlobRef:
        """Move the staged file into the store under its sha256 (durable on return)."""
        ref = self.finish()
        self._store.adopt(self.path, ref)
        self._gone = True  # nothing left to remove
        return ref

    def discard(self) -> None:
        """Drop the staged file if it is still there (safe to call twice)."""
        self._held.clear()
        self.body = None
        if self._fh is not None and not self._fh.closed:
            self._fh.close()
        if self._path is not None and not self._gone:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
        self._gone = True


class BlobStore:
    """Blobs named by their sha256 under ``root``.

    Args:
        root: the store's folder. Example: ``data_dir / "blobs"``.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        # sha256 -> (inode, size, mtime_ns) of a file whose content this process hashed.
        self._hashed: OrderedDict[str, tuple[int, int, int]] = OrderedDict()

    def _remember(self, sha256: str, path: Path) -> None:
        st = path.stat()
        self._hashed[sha256] = (st.st_ino, st.st_size, st.st_mtime_ns)
        self._hashed.move_to_end(sha256)
        while len(self._hashed) > _KNOWN_MAX:
            self._hashed.popitem(last=False)

    def _still_hashed(self, sha256: str, path: Path) -> BlobRef | None:
        known = self._hashed.get(sha256)
        if known is None:
            return None
        st = path.stat()
        return (
            BlobRef(sha256, st.st_size)
            if known == (st.st_ino, st.st_size, st.st_mtime_ns)
            else None
        )

    def path(self, sha256: str) -> Path:
        """Where the blob ``sha256`` lives (it may not exist)."""
        if not is_sha256(sha256):
            raise StorageError(f"blob names are 64 lowercase hex characters, got {sha256[:80]!r}")
        return self.root / sha256[:2] / sha256[2:]

    def exists(self, sha256: str) -> bool:
        """Whether the blob is stored."""
        return self.path(sha256).is_file()

    def require(self, sha256: str) -> Path:
        """The blob's path; raises ``StorageError`` if it is missing."""
        path = self.path(sha256)
        if not path.is_file():
            raise StorageError(f"blob {sha256} is referenced but missing from {self.root}")
        return path

    def put_bytes(self, data: bytes) -> BlobRef:
        """Store bytes (idempotent: an existing blob is left as it is)."""
        ref = BlobRef(hashlib.sha256(data).hexdigest(), len(data))
        path = self.path(ref.sha256)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_writer(path) as fh:
                fh.write(data)
            self._remember(ref.sha256, path)
        return ref

    def stage(self) -> StagedBlob:
        """Start writing a blob whose name is known only at the end (a streamed upload)."""
        return StagedBlob(self)

    def adopt(self, staged_path: Path, ref: BlobRef) -> None:
        """Rename an fsynced file into place as blob ``ref`` (drops it if the blob exists)."""
        path = self.path(ref.sha256)
        if path.is_file():
            staged_path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged_path, path)
        fsync_dir(path.parent)
        self._remember(ref.sha256, path)  # hashed as it was received

    def verify(self, sha256: str) -> BlobRef:
        """Re-hash a stored blob; raises ``StorageError`` if its content is not its name.

        A blob this process hashed whose file has not changed since is not read again.
        """
        path = self.require(sha256)
        if (ref := self._still_hashed(sha256, path)) is not None:
            return ref
        digest = hashlib.sha256()
        size = 0
        with path.open("rb") as fh:
            while chunk := fh.read(_READ_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        if digest.hexdigest() != sha256:
            raise StorageError(
                f"blob {sha256} is corrupt: its content hashes to {digest.hexdigest()}"
            )
        self._remember(sha256, path)
        return BlobRef(sha256, size)

    def verify_many(self, shas: list[str], *, workers: int | None = None) -> None:
        """``verify`` several blobs on parallel threads (hashlib releases the GIL while hashing)."""
        todo = [sha for sha in shas if self._still_hashed(sha, self.require(sha)) is None]
        if len(todo) <= 1:
            for sha in todo:
                self.verify(sha)
            return
        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(self.verify, todo))

    def clean_staging(self, *, min_age_s: float = 0.0) -> int:
        """Remove staged files left by a crash; returns how many were removed.

        Args:
            min_age_s: keep files modified more recently (another process sharing the blob
                folder may be receiving them). Default 0: remove all.
        """
        removed = 0
        cutoff = time.time() - min_age_s
        for leftover in self.tmp_dir.glob("*"):
            with contextlib.suppress(FileNotFoundError):
                if min_age_s and leftover.stat().st_mtime > cutoff:
                    continue
                leftover.unlink()
                removed += 1
        return removed
