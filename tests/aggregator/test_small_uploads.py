"""Small upload bodies stay in memory until the route's worker call writes, fsyncs and checks them.

A writer thread per upload and a memory map per check cost more than a 3 KB body's writes and
reads; a body over ``HOLD_BYTES`` still streams through its writer thread.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aggregator.api.deps import Services
from aggregator.rounds.validation import global_views
from aggregator.storage.blobs import BlobStore
from aggregator.storage.bundle_views import BundleViews
from tests.aggregator.helpers import Federation, update_bundle


def _writers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the writer threads uploads start (``ThreadPoolExecutor`` in aggregator.api.uploads)."""
    started: list[int] = []
    real = concurrent.futures.ThreadPoolExecutor

    def counted(*args: Any, **kwargs: Any) -> concurrent.futures.ThreadPoolExecutor:
        started.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("aggregator.api.uploads.ThreadPoolExecutor", counted)
    return started


def _round(fed: Federation, services: Services) -> None:
    fed.start(fed.create_experiment(rounds=1, min_sites=3))
    services.orchestrator.step()


def test_a_small_update_is_stored_without_a_writer_thread(
    fed: Federation, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    _round(fed, services)
    started = _writers(monkeypatch)
    task = fed.next_task("site-a")
    assert task is not None
    body = update_bundle(
        fed.model("site-a", task["task_id"]),
        site="site-a",
        round_number=1,
        num_samples=10,
        spec_hash=task["spec_hash"],
    )
    r = fed.upload("site-a", task["task_id"], body, 10)
    assert r.status_code == 200 and r.json()["accepted"], r.text
    assert started == []
    stored = services.blobs.path(hashlib.sha256(body).hexdigest())
    assert stored.read_bytes() == body  # durable under its name, byte for byte


def test_a_body_over_the_hold_size_streams_through_its_writer(
    fed: Federation, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    _round(fed, services)
    monkeypatch.setattr("aggregator.api.routes.tasks.HOLD_BYTES", 64)
    started = _writers(monkeypatch)
    task = fed.next_task("site-b")
    assert task is not None
    body = update_bundle(
        fed.model("site-b", task["task_id"]),
        site="site-b",
        round_number=1,
        num_samples=10,
        spec_hash=task["spec_hash"],
    )
    r = fed.upload("site-b", task["task_id"], body, 10)
    assert r.status_code == 200 and r.json()["accepted"], r.text
    assert started == [1]
    assert services.blobs.path(hashlib.sha256(body).hexdigest()).read_bytes() == body


def test_held_chunks_are_written_in_order_and_kept_for_the_checks(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    staged = store.stage()
    for chunk in (b"ab", b"cd", b"ef"):
        staged.hold(chunk)
    assert staged.digest().sha256 == hashlib.sha256(b"abcdef").hexdigest()
    ref = staged.finish()
    assert staged.path.read_bytes() == b"abcdef" and staged.body == b"abcdef"
    assert ref.size == 6
    staged.commit()
    assert store.path(ref.sha256).read_bytes() == b"abcdef"

    mixed = store.stage()
    mixed.hold(b"ab")
    mixed.write(b"cd")  # past the hold size: the rest streams
    mixed.finish()
    assert mixed.path.read_bytes() == b"abcd" and mixed.body is None
    mixed.discard()


def test_views_on_bytes_match_views_on_the_file(tmp_path: Path) -> None:
    from data_specs.weights.bundle import BundleMeta, encode_bundle

    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float16)}
    data = encode_bundle(tensors, BundleMeta(spec_hash="s" * 64, round=1, num_samples=3))
    path = tmp_path / "bundle.safetensors"
    path.write_bytes(data)
    on_file, in_memory = BundleViews(path), BundleViews(path, data=data)
    assert on_file.meta == in_memory.meta and list(on_file) == list(in_memory)
    for key in on_file:
        assert np.array_equal(on_file[key], in_memory[key])
        assert not in_memory[key].flags.writeable


def test_a_global_models_views_are_parsed_once_and_follow_the_file(tmp_path: Path) -> None:
    from data_specs.weights.bundle import BundleMeta, encode_bundle

    path = tmp_path / "global.safetensors"
    meta = BundleMeta(spec_hash="s" * 64, round=0, num_samples=1)
    path.write_bytes(encode_bundle({"a": np.zeros(3, np.float32)}, meta))
    first = global_views(path)
    assert global_views(path) is first
    path.unlink()
    path.write_bytes(encode_bundle({"a": np.ones(5, np.float32)}, meta))
    again = global_views(path)
    assert again is not first and again.shape("a") == (5,)
