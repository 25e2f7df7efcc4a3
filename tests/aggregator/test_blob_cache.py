"""The in-memory cache of served blobs: one disk read per blob, bounded bytes, large ones streamed."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.errors import StorageError
from aggregator.storage.blob_cache import BlobCache
from aggregator.storage.blobs import BlobStore


def _store(tmp_path: Path, *bodies: bytes) -> tuple[BlobStore, list[str]]:
    blobs = BlobStore(tmp_path / "blobs")
    return blobs, [blobs.put_bytes(b).sha256 for b in bodies]


def test_read_once_then_served_from_memory(tmp_path: Path) -> None:
    blobs, (sha,) = _store(tmp_path, b"a" * 100)
    cache = BlobCache(blobs, max_bytes=1000)
    assert cache.get(sha, 100) == b"a" * 100
    blobs.path(sha).unlink()  # gone from disk: the second request never reads it
    assert cache.get(sha, 100) == b"a" * 100
    assert cache.held_bytes == 100


def test_least_recently_used_leaves_first(tmp_path: Path) -> None:
    blobs, (a, b, c) = _store(tmp_path, b"a" * 40, b"b" * 40, b"c" * 40)
    cache = BlobCache(blobs, max_bytes=100)
    cache.get(a, 40)
    cache.get(b, 40)
    cache.get(a, 40)  # a is now the most recent
    cache.get(c, 40)  # 120 > 100: b goes
    assert cache.held_bytes == 80
    blobs.path(b).unlink()
    with pytest.raises(StorageError):
        cache.get(b, 40)
    blobs.path(a).unlink()
    assert cache.get(a, 40) == b"a" * 40


def test_large_blob_is_left_to_streaming(tmp_path: Path) -> None:
    blobs, (sha,) = _store(tmp_path, b"x" * 500)
    cache = BlobCache(blobs, max_bytes=1000, max_item_bytes=100)
    assert cache.get(sha, 500) is None
    assert cache.held_bytes == 0


def test_missing_blob_raises(tmp_path: Path) -> None:
    cache = BlobCache(BlobStore(tmp_path / "blobs"))
    with pytest.raises(StorageError):
        cache.get("0" * 64, 10)
