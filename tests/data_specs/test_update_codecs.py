"""Each update codec keeps its numerical promise (unbiased, bounded error, exact, smaller)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from scipy.linalg import hadamard

from data_specs.constants import BundleKind
from data_specs.update_codecs import (
    CODECS,
    decode_update,
    encode_update,
    lowrank_basis,
    payload_nbytes,
    randmask_mask,
)
from data_specs.update_codecs.hadamard import fwht, random_signs, rotate, unrotate
from data_specs.update_codecs.quantize import pack_bits, unpack_bits
from data_specs.weights.bundle import BundleMeta, decode_bundle, encode_bundle
from data_specs.wire import CodecConfig


def meta_for(name: str, codec_params: dict[str, Any]) -> BundleMeta:
    return BundleMeta(
        spec_hash="0123456789abcdef",
        round=3,
        kind=BundleKind.DIFF,
        num_samples=10,
        codec=name,
        codec_params=codec_params,
    )


def expected_of(diff: dict[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (v.shape, str(v.dtype)) for k, v in diff.items()}


def roundtrip(
    diff: dict[str, np.ndarray],
    name: str,
    params: dict[str, Any],
    *,
    seed: int = 0,
    min_size: int = 0,
    state: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    config = CodecConfig(name=name, params=params, min_size=min_size)
    payload, codec_params = encode_update(diff, config, seed=seed, state=state)
    return decode_update(payload, meta_for(name, codec_params), expected_of(diff)), payload


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((8, 4, 4, 4)).astype(np.float32)  # 512


@pytest.mark.parametrize(
    ("bits", "rotated", "seeds"),
    [
        (8, False, 400),
        (4, False, 600),
        pytest.param(2, True, 1000, marks=pytest.mark.slow),  # thousands of round trips
        pytest.param(1, False, 2000, marks=pytest.mark.slow),
        pytest.param(1, True, 2000, marks=pytest.mark.slow),
    ],
)
def test_quantize_is_unbiased(bits: int, rotated: bool, seeds: int, x: np.ndarray) -> None:
    params = {"bits": bits, "rotate": rotated}
    total = np.zeros(x.shape, np.float64)
    max_step = 0.0
    for seed in range(seeds):
        out, payload = roundtrip({"w": x}, "quantize", params, seed=seed)
        total += out["w"]
        step = (payload["w#q_hi"] - payload["w#q_lo"]) / (2**bits - 1)
        max_step = max(max_step, float(step.max()))
    bias = total / seeds - x
    # Each decoded value is x plus a zero-mean error of at most one step (variance <= step²/4;
    # a rotation is orthogonal so it keeps that bound per coordinate). Over independent seeds
    # the mean error has std <= step / (2 √N): 6 std bounds all 512 coordinates (p ~ 1e-6).
    sigma = max_step / (2 * np.sqrt(seeds))
    assert np.abs(bias).max() < 6 * sigma
    assert abs(bias.mean()) < 6 * sigma / np.sqrt(x.size)


def test_quantize_with_round_to_nearest_would_fail_the_unbiasedness_bound(x: np.ndarray) -> None:
    lo, hi = x.min(), x.max()
    step = (hi - lo) / 3
    nearest = lo + np.round((x - lo) / step) * step  # a deterministic (biased) 2-bit quantiser
    assert np.abs(nearest - x).max() > 6 * step / (2 * np.sqrt(1000))


def test_quantize_8_bit_round_trip_is_within_one_step(x: np.ndarray) -> None:
    big = np.random.default_rng(1).normal(0.0, 0.01, size=5000).astype(np.float32)
    out, payload = roundtrip({"w": x, "b": big}, "quantize", {"bits": 8, "block": 256})
    for key, value in (("w", x), ("b", big)):
        step = (payload[f"{key}#q_hi"] - payload[f"{key}#q_lo"]) / 255
        per_value = np.repeat(step, 256)[: value.size].reshape(value.shape)
        assert np.all(np.abs(out[key] - value) <= per_value * (1 + 1e-5) + 1e-12)
    # With rotation the error is bounded in the rotated basis; norms carry over unchanged.
    out, payload = roundtrip({"w": x}, "quantize", {"bits": 8, "rotate": True})
    step = float(((payload["w#q_hi"] - payload["w#q_lo"]) / 255).max())
    assert np.linalg.norm(out["w"] - x) <= step * np.sqrt(x.size)


def test_quantize_constant_blocks_decode_exactly() -> None:
    flat = {"zeros": np.zeros(3000, np.float32), "ones": np.full((40, 50), 0.25, np.float32)}
    for rotated in (False, True):
        out, _ = roundtrip(flat, "quantize", {"bits": 1, "rotate": rotated})
        np.testing.assert_array_equal(out["zeros"], flat["zeros"])
        if not rotated:
            np.testing.assert_array_equal(out["ones"], flat["ones"])


@pytest.mark.parametrize(("bits", "ideal"), [(8, 4), (4, 8), (2, 16), (1, 32)])
def test_quantize_payload_is_bits_over_32_of_float32(bits: int, ideal: int) -> None:
    big = np.random.default_rng(2).standard_normal((256, 64, 8, 8)).astype(np.float32)  # 1 M
    _, payload = roundtrip({"w": big}, "quantize", {"bits": bits, "rotate": bits == 4})
    ratio = big.nbytes / payload_nbytes(payload)
    # Per 1024-value block: 1024·bits/8 bytes of codes + 8 bytes of min/max.
    assert ideal * 0.93 < ratio <= ideal
    assert payload["w#q"].dtype == np.uint8 and payload["w#q"].size == big.size * bits // 8


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_bit_packing_round_trips(bits: int) -> None:
    codes = np.random.default_rng(bits).integers(0, 2**bits, size=64, dtype=np.uint8)
    packed = pack_bits(codes, bits)
    assert packed.size == 64 * bits // 8
    np.testing.assert_array_equal(unpack_bits(packed, bits), codes)
    assert pack_bits(np.array([1, 2], np.uint8), 4).tolist() == [0x12]
    assert pack_bits(np.array([1, 0, 0, 0, 0, 0, 0, 1], np.uint8), 1).tolist() == [0x81]


def test_rotation_is_orthogonal_and_inverted() -> None:
    rng = np.random.default_rng(3)
    v = rng.standard_normal((3, 16))
    np.testing.assert_allclose(fwht(v), v @ hadamard(16), atol=1e-12)
    signs = random_signs(rng, (1, 64))
    matrix = rotate(np.eye(64), np.repeat(signs, 64, axis=0))  # rows: R applied to e_i
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(64), atol=1e-6)
    blocks = rng.standard_normal((20, 1024)).astype(np.float32)
    s = random_signs(rng, blocks.shape)
    y = rotate(blocks, s)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(blocks, axis=1), rtol=1e-5)
    np.testing.assert_allclose(unrotate(y, s), blocks, atol=1e-5)
    # A spike is spread evenly: rotation is what makes coarse quantisation work.
    spike = np.zeros((1, 1024), np.float32)
    spike[0, 5] = 1.0
    assert np.abs(rotate(spike, s[:1])).max() == pytest.approx(1 / 32)


@pytest.mark.slow
def test_subsample_is_unbiased_and_sends_only_kept_values(x: np.ndarray) -> None:
    seeds, p = 2000, 0.25
    total = np.zeros(x.shape, np.float64)
    for seed in range(seeds):
        out, payload = roundtrip({"w": x}, "subsample", {"p": p}, seed=seed)
        total += out["w"]
    assert list(payload) == ["w#sub"] and payload["w#sub"].shape == (128,)
    # decoded_j = x_j/p with probability p, else 0: variance x_j²(1/p − 1). 6 std over N seeds.
    sigma = np.abs(x) * np.sqrt((1 / p - 1) / seeds)
    assert np.all(np.abs(total / seeds - x) <= 6 * sigma + 1e-6)
    assert np.count_nonzero(out["w"]) == 128


def test_topk_error_feedback_loses_nothing() -> None:
    rng = np.random.default_rng(4)
    state: dict[str, np.ndarray] = {}
    sent = np.zeros((40, 30), np.float32)
    total = np.zeros((40, 30), np.float32)
    for round_ in range(6):
        # Integer-valued updates make float32 sums exact, so equality can be exact.
        diff = {"w": rng.integers(-50, 50, size=(40, 30)).astype(np.float32)}
        out, payload = roundtrip(diff, "topk", {"fraction": 0.05}, state=state, seed=round_)
        assert payload["w#topk_idx"].dtype == np.int32 and payload["w#topk_idx"].size == 60
        sent += out["w"]
        total += diff["w"]
        np.testing.assert_array_equal(sent + state["w"], total)
    # Random floats: equal up to float32 rounding.
    state, sent_f, total_f = {}, 0.0, 0.0
    for _ in range(4):
        diff = {"w": rng.standard_normal(3000).astype(np.float32)}
        out, _ = roundtrip(diff, "topk", {"fraction": 0.1}, state=state)
        sent_f, total_f = sent_f + out["w"].astype(np.float64), total_f + diff["w"]
    np.testing.assert_allclose(sent_f + state["w"], total_f, atol=1e-5)


def test_topk_keeps_the_largest_magnitudes_without_state() -> None:
    v = np.random.default_rng(5).standard_normal(1000).astype(np.float32)
    out, _ = roundtrip({"w": v}, "topk", {"fraction": 0.02})
    top = np.argsort(-np.abs(v))[:20]
    assert set(np.flatnonzero(out["w"])) == set(top)
    np.testing.assert_array_equal(out["w"][top], v[top])


def test_lowrank_is_exact_in_the_span_and_a_projection_otherwise() -> None:
    rng = np.random.default_rng(6)
    shape, rank = (16, 8, 3, 3, 3), 5
    b = lowrank_basis(shape, 11, rank, key="conv.weight").astype(np.float64)
    in_span = (rng.standard_normal((16, rank)) @ b).astype(np.float32).reshape(shape)
    out, payload = roundtrip({"conv.weight": in_span}, "lowrank", {"rank": rank}, seed=11)
    assert payload["conv.weight#lr_a"].shape == (16, rank)
    np.testing.assert_allclose(out["conv.weight"], in_span, rtol=1e-4, atol=1e-5)
    anywhere = rng.standard_normal(shape).astype(np.float32)
    out, _ = roundtrip({"conv.weight": anywhere}, "lowrank", {"rank": rank}, seed=11)
    residual = (anywhere - out["conv.weight"]).reshape(16, -1).astype(np.float64)
    np.testing.assert_allclose(residual @ b.T, 0.0, atol=1e-4)  # least squares: residual ⟂ B
    # 1-D tensors and rest <= rank travel raw.
    _, payload = roundtrip(
        {"bias": anywhere.reshape(-1), "thin": anywhere.reshape(864, 4)}, "lowrank", {"rank": 4}
    )
    assert set(payload) == {"bias", "thin"}


def test_randmask_is_the_update_restricted_to_the_mask() -> None:
    rng = np.random.default_rng(8)
    shape = (32, 16, 3, 3)
    mask = randmask_mask(shape, 9, 0.1, key="a")
    assert mask.dtype == bool and mask.sum() == round(0.1 * mask.size)
    assert not np.array_equal(mask, randmask_mask(shape, 9, 0.1, key="b"))
    full = rng.standard_normal(shape).astype(np.float32)
    out, payload = roundtrip({"a": full}, "randmask", {"p": 0.1}, seed=9)
    np.testing.assert_array_equal(out["a"], np.where(mask, full, 0.0))
    assert payload["a#mask"].shape == (mask.sum(),)
    trained_on_mask = np.where(mask, full, 0.0).astype(np.float32)
    out, _ = roundtrip({"a": trained_on_mask}, "randmask", {"p": 0.1}, seed=9)
    np.testing.assert_array_equal(out["a"], trained_on_mask)


@pytest.mark.parametrize("name", sorted(CODECS))
def test_small_and_integer_tensors_travel_raw_through_a_real_bundle(name: str) -> None:
    rng = np.random.default_rng(10)
    diff = {
        "conv.weight": rng.standard_normal((32, 16, 3, 3)).astype(np.float32),
        "conv.bias": rng.standard_normal(32).astype(np.float32),
        "norm.num_batches_tracked": np.array(7, dtype=np.int64),
    }
    config = CodecConfig(name=name, params={}, min_size=1024)
    payload, codec_params = encode_update(diff, config, seed=3, state={})
    assert payload["conv.bias"] is diff["conv.bias"]
    assert payload["norm.num_batches_tracked"] is diff["norm.num_batches_tracked"]
    data = encode_bundle(payload, meta_for(name, codec_params))
    bundle = decode_bundle(data, expected=None, spec_hash="0123456789abcdef")
    out = decode_update(bundle.tensors, bundle.meta, expected_of(diff), allowed={name}, seed=3)
    assert list(out) == list(diff)
    for key, value in diff.items():
        assert out[key].dtype == value.dtype and out[key].shape == value.shape
    np.testing.assert_array_equal(out["conv.bias"], diff["conv.bias"])
    assert int(out["norm.num_batches_tracked"]) == 7
    if name == "none":
        np.testing.assert_array_equal(out["conv.weight"], diff["conv.weight"])


@pytest.mark.parametrize("name", sorted(set(CODECS) - {"none"}))
def test_encoding_is_a_pure_function_of_its_inputs(name: str, x: np.ndarray) -> None:
    config = CodecConfig(name=name, min_size=0)
    a, pa = encode_update({"w": x}, config, seed=5)
    b, pb = encode_update({"w": x}, config, seed=5)
    _, pc = encode_update({"w": x}, config, seed=6)
    assert pa == pb and all(np.array_equal(a[k], b[k]) for k in a)
    assert pa["checksum"] != pc["checksum"]


def test_codecs_do_not_import_torch() -> None:
    code = "import sys, data_specs.update_codecs; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
