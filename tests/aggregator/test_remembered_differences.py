"""A round small enough computes each update's difference once, with the same bits as streaming.

Three paths: the difference matrix (``aggregator.rounds.diff_matrix``: every float32 key of an
update in one row), differences remembered key by key (float64 models, an update that differs),
and streaming (a round too big for memory). All three give the same global model, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aggregator.rounds import aggregation, diff_matrix
from aggregator.rounds.aggregation import BundleUpdateReader, UpdateInput
from aggregator.storage.blobs import BlobStore
from data_specs.constants import BundleKind
from data_specs.weights.bundle import BundleMeta, encode_bundle
from tests.aggregator.test_diff_matrix import aggregate_fedavg


def _round(tmp_path: Path) -> tuple[BlobStore, str, list[UpdateInput]]:
    rng = np.random.default_rng(7)
    blobs = BlobStore(tmp_path / "blobs")
    meta = BundleMeta(spec_hash="x", round=1, kind=BundleKind.FULL, num_samples=1)
    shapes = {"a": (4, 3, 3), "b": (4,), "c": (70000,)}
    theta = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    global_sha = blobs.put_bytes(encode_bundle(theta, meta)).sha256
    updates = []
    for i in range(5):
        step = -1.0 if i == 4 else 1.0  # one opposing update: the direction guard drops it
        tensors = {k: v + step * 0.01 * (1 + rng.random(v.shape)) for k, v in theta.items()}
        tensors = {k: v.astype(np.float32) for k, v in tensors.items()}
        sha = blobs.put_bytes(encode_bundle(tensors, meta)).sha256
        updates.append(UpdateInput(f"site{i}", 10 + i, sha))
    return blobs, global_sha, updates


def _aggregate(blobs: BlobStore, global_sha: str, updates: list[UpdateInput]) -> dict[str, bytes]:
    new, report = aggregate_fedavg(blobs, global_sha, updates, robust_norm_multiple=1.5)
    assert report.opposed
    return new


def test_remembered_and_streamed_differences_give_the_same_bits_once_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs, global_sha, updates = _round(tmp_path)
    computed: list[tuple[str, str]] = []
    real = BundleUpdateReader._difference

    def counting(self: BundleUpdateReader, key: str) -> np.ndarray:
        computed.append((self.site_id, key))
        return real(self, key)

    monkeypatch.setattr(BundleUpdateReader, "_difference", counting)
    built: list[object] = []
    real_build = diff_matrix.build

    def recording(*args: object, **kwargs: object) -> object:
        built.append(real_build(*args, **kwargs))  # type: ignore[arg-type]
        return built[-1]

    monkeypatch.setattr(diff_matrix, "build", recording)
    in_matrix = _aggregate(blobs, global_sha, updates)
    assert built and built[0] is not None and computed == []  # one subtraction per update

    monkeypatch.setattr(diff_matrix, "build", lambda *args, **kwargs: None)
    remembered = _aggregate(blobs, global_sha, updates)
    assert len(computed) == len(set(computed)) == 5 * 3  # every difference exactly once
    assert remembered == in_matrix

    computed.clear()
    monkeypatch.setattr(aggregation, "REMEMBER_BYTES", 0)  # a round too big to remember
    streamed = _aggregate(blobs, global_sha, updates)
    assert len(computed) > len(set(computed))  # streaming reads again in every pass
    assert remembered == streamed
