"""Blob store, canonical bundle bytes, server state round trip."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from aggregator.errors import StorageError
from aggregator.storage.blobs import BlobStore
from aggregator.storage.global_models import load_state, store_state
from data_specs.weights.bundle import (
    BundleMeta,
    canonical_safetensors,
    decode_bundle,
    encode_bundle,
)


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "b.weight": rng.standard_normal((3, 4)).astype(np.float32),
        "a.bias": rng.standard_normal(4).astype(np.float32),
        "n.num_batches_tracked": np.asarray(7, np.int64),
        "empty": np.zeros((0, 2), np.float32),
    }


def test_put_bytes_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    ref = store.put_bytes(b"hello")
    digest = hashlib.sha256(b"hello").hexdigest()
    assert ref.sha256 == digest and ref.size == 5
    assert store.path(digest) == tmp_path / "blobs" / digest[:2] / digest[2:]
    assert store.path(digest).read_bytes() == b"hello"
    assert store.put_bytes(b"hello") == ref
    assert store.verify(digest) == ref
    with pytest.raises(StorageError):
        store.path("../../etc/passwd")


def test_staged_blob_commit_discard_and_corruption(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    staged = store.stage()
    for chunk in (b"ab", b"cd", b"ef"):
        staged.write(chunk)
    ref = staged.commit()
    assert ref.sha256 == hashlib.sha256(b"abcdef").hexdigest() and store.exists(ref.sha256)
    assert list(store.tmp_dir.iterdir()) == []
    dropped = store.stage()
    dropped.write(b"zzz")
    dropped.discard()
    dropped.discard()
    assert list(store.tmp_dir.iterdir()) == []
    store.path(ref.sha256).write_bytes(b"abcdeX")
    with pytest.raises(StorageError, match="corrupt"):
        store.verify(ref.sha256)
    with pytest.raises(StorageError, match="missing"):
        store.require("0" * 64)


def test_clean_staging_removes_crash_leftovers(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    (store.tmp_dir / "stage.abc.tmp").write_bytes(b"half")
    assert store.clean_staging() == 1 and list(store.tmp_dir.iterdir()) == []


def test_canonical_bytes_are_stable_and_decode_the_same() -> None:
    meta = BundleMeta(spec_hash="abc", round=3, num_samples=2, codec_params={"z": 1, "a": 2})
    raw = {encode_bundle(_tensors(), meta) for _ in range(10)}
    canonical = {canonical_safetensors(b) for b in raw}
    assert len(canonical) == 1
    (data,) = canonical
    assert encode_bundle(_tensors(), meta) == data
    assert canonical_safetensors(data) == data
    assert int.from_bytes(data[:8], "little") % 8 == 0
    decoded = decode_bundle(data)
    assert decoded.meta == meta
    for key, value in _tensors().items():
        np.testing.assert_array_equal(decoded.tensors[key], value)


def test_server_state_round_trip(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    assert store_state(store, {}) is None and load_state(store, None) == {}
    state = {
        "m.w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "v.w": np.asarray(np.float32(2.0)),
    }
    ref = store_state(store, state)
    assert ref is not None and store_state(store, state) == ref
    back = load_state(store, ref.sha256)
    assert set(back) == set(state)
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value)


def test_bundle_views_are_zero_copy_and_checked(tmp_path: Path) -> None:
    import json

    from aggregator.storage.bundle_views import BundleViews
    from data_specs.errors import BundleError

    meta = BundleMeta(spec_hash="abc", round=1, num_samples=3)
    path = tmp_path / "b.safetensors"
    path.write_bytes(encode_bundle(_tensors(), meta))
    views = BundleViews(path)
    assert views.meta == meta and set(views) == set(_tensors())
    for key, value in _tensors().items():
        got = views[key]
        assert got.dtype == value.dtype and not got.flags.writeable
        assert value.size == 0 or not got.flags.owndata
        np.testing.assert_array_equal(got, value)

    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    header["a.bias"]["data_offsets"][1] += 4  # claims more bytes than its shape needs

    def rewrite(h: dict[str, object], body: bytes) -> Path:
        text = json.dumps(h).encode()
        text += b" " * (-len(text) % 8)
        out = tmp_path / "bad.safetensors"
        out.write_bytes(len(text).to_bytes(8, "little") + text + body)
        return out

    with pytest.raises(BundleError, match="do not hold shape"):
        BundleViews(rewrite(header, data[8 + length :]))
    header = json.loads(data[8 : 8 + length])
    header["a.bias"]["dtype"] = "BF16"
    with pytest.raises(BundleError, match="unsupported dtype"):
        BundleViews(rewrite(header, data[8 + length :]))
    with pytest.raises(BundleError, match="truncated or padded"):
        BundleViews(rewrite(json.loads(data[8 : 8 + length]), data[8 + length :] + b"\0" * 8))


def test_verify_reads_only_blobs_not_hashed_by_this_process_or_changed_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "blobs")
    written = store.put_bytes(b"written here")
    staged = store.stage()
    staged.write(b"received here")
    received = staged.commit()
    hashed: list[int] = []
    real_sha256 = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: hashed.append(1) or real_sha256(*a))
    store.verify_many([written.sha256, received.sha256])
    assert hashed == []  # both were hashed as they were stored, and their files are unchanged
    fresh = BlobStore(tmp_path / "blobs")  # a restarted aggregator hashes everything once
    fresh.verify_many([written.sha256, received.sha256])
    assert len(hashed) == 2
    fresh.verify(written.sha256)
    assert len(hashed) == 2
    path = store.path(received.sha256)
    path.write_bytes(b"received herX")  # same size, new modification time
    with pytest.raises(StorageError, match="corrupt"):
        store.verify(received.sha256)


def test_a_staged_blob_creates_its_file_only_when_it_writes(tmp_path: Path) -> None:
    """A small upload is held on the event loop: no file until a worker thread finishes it,
    and a refused one leaves nothing behind without touching the disk."""
    store = BlobStore(tmp_path / "blobs")
    refused = store.stage()
    refused.hold(b"abc")
    assert list(store.tmp_dir.iterdir()) == []
    refused.discard()
    assert list(store.tmp_dir.iterdir()) == []
    with pytest.raises(StorageError, match="discarded"):
        _ = refused.path

    held = store.stage()
    held.hold(b"abc")
    ref = held.finish()  # the worker thread's call: written and fsynced now
    assert [p.read_bytes() for p in store.tmp_dir.iterdir()] == [b"abc"]
    assert held.commit() == ref and list(store.tmp_dir.iterdir()) == []
    held.discard()  # after a commit: nothing to remove, nothing raised

    empty = store.stage()  # an empty body still becomes a (empty) blob
    assert empty.commit().size == 0 and store.path(empty.digest().sha256).read_bytes() == b""
