"""The difference matrix: one subtraction per update, the per-key path's bits, its fallbacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aggregator.errors import AggregationError
from aggregator.rounds import diff_matrix
from aggregator.rounds.aggregation import UpdateInput, aggregate_updates, open_readers
from aggregator.rounds.guards.safeguards import GuardReport
from aggregator.storage.blobs import BlobStore
from aggregator.storage.bundle_views import BundleViews
from aggregator.storage.global_models import load_weights
from data_specs.constants import BundleKind
from data_specs.weights.bundle import BundleMeta, encode_bundle

SHAPES = {"conv.weight": (8, 4, 3, 3), "conv.bias": (8,), "norm.weight": (8,), "head": (300,)}


def _store(
    tmp_path: Path,
    *,
    kind: BundleKind = BundleKind.FULL,
    half: str | None = None,
    scales: tuple[float, ...] = (1.0, 1.0, 30.0, 1.0, -1.0, 1.0),
) -> tuple[BlobStore, str, list[UpdateInput]]:
    """θ and one update per scale: a ×30 one (clipped) and a sign-flipped one (opposed)."""
    rng = np.random.default_rng(3)
    blobs = BlobStore(tmp_path / "blobs")
    theta = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    theta["steps"] = np.array(7, dtype=np.int64)  # an integer buffer stays out of the matrix
    meta = BundleMeta(spec_hash="x", round=1, kind=BundleKind.FULL, num_samples=1)
    global_sha = blobs.put_bytes(encode_bundle(theta, meta)).sha256
    direction = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    updates = []
    for i, scale in enumerate(scales):
        diff = {
            k: (scale * 0.01 * (v + 0.3 * rng.standard_normal(v.shape))).astype(np.float32)
            for k, v in direction.items()
        }
        tensors: dict[str, np.ndarray] = (
            diff if kind == BundleKind.DIFF else {k: theta[k] + d for k, d in diff.items()}
        )
        if half is not None:
            tensors[half] = tensors[half].astype(np.float16)  # float16 on the wire
        tensors["steps"] = np.array(8 + i, dtype=np.int64)
        update_meta = BundleMeta(spec_hash="x", round=1, kind=kind, num_samples=10 + i)
        sha = blobs.put_bytes(encode_bundle(tensors, update_meta)).sha256
        updates.append(UpdateInput(f"site{i}", 10 + i, sha))
    return blobs, global_sha, updates


def aggregate_fedavg(
    blobs: BlobStore,
    global_sha: str,
    updates: list[UpdateInput],
    *,
    local_keys: frozenset[str] = frozenset(),
    robust_norm_multiple: float = 3.0,
) -> tuple[dict[str, bytes], GuardReport]:
    """FedAvg with both guards on: the new global model's bytes per key, and the guard report."""
    report: list[GuardReport] = []
    new, _ = aggregate_updates(
        blobs,
        strategy_name="fedavg",
        strategy_params={},
        global_sha256=global_sha,
        state_sha256=None,
        updates=updates,
        local_keys=local_keys,
        robust_norm_multiple=robust_norm_multiple,
        min_update_cosine=0.0,
        report=report,
    )
    return {k: v.tobytes() for k, v in new.items()}, report[0]


def _aggregate(
    blobs: BlobStore, global_sha: str, updates: list[UpdateInput]
) -> tuple[dict[str, bytes], GuardReport]:
    return aggregate_fedavg(blobs, global_sha, updates, local_keys=frozenset({"norm.weight"}))


@pytest.mark.parametrize(
    ("kind", "half"),
    [(BundleKind.FULL, None), (BundleKind.DIFF, None), (BundleKind.FULL, "conv.bias")],
)
def test_the_matrix_gives_the_per_key_paths_model_and_guard_decisions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: BundleKind, half: str | None
) -> None:
    blobs, global_sha, updates = _store(tmp_path, kind=kind, half=half)
    built: list[diff_matrix.DiffMatrix | None] = []
    real = diff_matrix.build

    def recording(*args: object) -> diff_matrix.DiffMatrix | None:
        built.append(real(*args))  # type: ignore[arg-type]
        return built[-1]

    monkeypatch.setattr(diff_matrix, "build", recording)
    fast, fast_report = _aggregate(blobs, global_sha, updates)
    assert built and built[0] is not None

    monkeypatch.setattr(diff_matrix, "build", lambda *a: None)
    slow, slow_report = _aggregate(blobs, global_sha, updates)

    assert set(fast_report.opposed) == set(slow_report.opposed) == {"site4"}
    assert set(fast_report.clipped) == set(slow_report.clipped) == {"site2"}
    # One float32 dot per row against a sum of per-key dots: the norms (and so the clip
    # factor) agree to float32 rounding; every unclipped value is the same subtraction.
    assert fast_report.median_norm == pytest.approx(slow_report.median_norm, rel=1e-5)
    assert fast_report.clipped["site2"] == pytest.approx(slow_report.clipped["site2"], rel=1e-5)
    assert fast.keys() == slow.keys()
    for key in fast:
        a = np.frombuffer(fast[key], dtype=np.uint8)
        b = np.frombuffer(slow[key], dtype=np.uint8)
        if key in ("norm.weight", "steps"):
            assert np.array_equal(a, b), key  # kept from θ / integer max: untouched
        else:
            assert np.allclose(a.view(np.float32), b.view(np.float32), rtol=1e-5, atol=1e-7), key


def test_without_clipping_the_matrix_and_the_per_key_path_agree_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs, global_sha, updates = _store(tmp_path, scales=(1.0, 1.2, 0.8, -1.0, 1.1))
    fast, report = _aggregate(blobs, global_sha, updates)
    assert report.opposed and not report.clipped
    monkeypatch.setattr(diff_matrix, "build", lambda *a: None)
    assert _aggregate(blobs, global_sha, updates)[0] == fast


def test_a_canonical_update_is_one_span_and_rows_are_read_only(tmp_path: Path) -> None:
    blobs, global_sha, updates = _store(tmp_path)
    theta = load_weights(blobs.require(global_sha))
    keys = [k for k in theta if k != "norm.weight"]
    readers, matrix = open_readers(blobs, updates, theta, keys)
    assert matrix is not None
    assert set(matrix.columns) == {"conv.weight", "conv.bias", "head"}  # float32, averaged
    views = BundleViews(blobs.require(updates[0].sha256))
    spans = diff_matrix._spans(views.layout, matrix.columns, theta)
    assert spans is not None and len(spans) == 1
    want = np.asarray(views["conv.weight"]) - theta["conv.weight"]
    assert np.array_equal(readers[0].get("conv.weight"), want)
    with pytest.raises(ValueError, match="read-only"):
        matrix.rows[0, 0] = 1.0
    with pytest.raises(ValueError, match="outside the data"):
        views.span(0, 10**9, np.dtype(np.float32))


def test_an_update_of_another_shape_leaves_the_round_to_the_per_key_message(
    tmp_path: Path,
) -> None:
    blobs, global_sha, updates = _store(tmp_path, scales=(1.0, 1.0, 1.0))
    rng = np.random.default_rng(0)
    theta = load_weights(blobs.require(global_sha))
    odd = {k: v.copy() for k, v in theta.items()}
    odd["head"] = rng.standard_normal((299,)).astype(np.float32)
    meta = BundleMeta(spec_hash="x", round=1, kind=BundleKind.FULL, num_samples=1)
    sha = blobs.put_bytes(encode_bundle(odd, meta)).sha256
    updates.append(UpdateInput("zz-odd", 5, sha))
    _, matrix = open_readers(blobs, updates, theta, list(theta))
    assert matrix is None
    with pytest.raises(AggregationError, match=r"'zz-odd'.*'head' has shape"):
        _aggregate(blobs, global_sha, updates)


def test_a_float64_model_keeps_the_per_key_path(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    meta = BundleMeta(spec_hash="x", round=1, kind=BundleKind.FULL, num_samples=1)
    theta = {"w": np.arange(6, dtype=np.float64)}
    global_sha = blobs.put_bytes(encode_bundle(theta, meta)).sha256
    sha = blobs.put_bytes(encode_bundle({"w": theta["w"] + 1}, meta)).sha256
    readers, matrix = open_readers(
        blobs, [UpdateInput("a", 1, sha)], load_weights(blobs.require(global_sha)), ["w"]
    )
    assert matrix is None
    assert np.array_equal(readers[0].get("w"), np.ones(6))
