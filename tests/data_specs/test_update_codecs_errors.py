"""Every bad compressed update is refused with a CodecError that says why."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from data_specs.constants import BundleKind
from data_specs.errors import BundleError, CodecError
from data_specs.parameters.codecs import QuantizeCodec
from data_specs.update_codecs import CODECS, decode_update, encode_update
from data_specs.weights.bundle import BundleMeta
from data_specs.wire import CodecConfig

W = np.random.default_rng(0).standard_normal((32, 16, 3, 3)).astype(np.float32)
DIFF = {"w": W, "b": np.zeros(32, np.float32), "n": np.array(3, np.int64)}
EXPECTED = {k: (v.shape, str(v.dtype)) for k, v in DIFF.items()}


def encoded(name: str, params: dict[str, Any] | None = None, seed: int = 5):
    config = CodecConfig(name=name, params=params or {}, min_size=1024)
    payload, codec_params = encode_update(DIFF, config, seed=seed, state={})
    meta = BundleMeta("0123456789abcdef", 1, BundleKind.DIFF, 4, name, codec_params)
    return payload, meta


def refused(payload, meta, fragment: str, expected=EXPECTED, **kwargs: Any) -> None:
    with pytest.raises(CodecError) as info:
        decode_update(payload, meta, expected, **kwargs)
    assert fragment in str(info.value), str(info.value)
    assert isinstance(info.value, BundleError)


def with_params(meta: BundleMeta, **changes: Any) -> BundleMeta:
    return dataclasses.replace(meta, codec_params={**meta.codec_params, **changes})


def test_a_disallowed_or_unknown_codec_is_refused() -> None:
    payload, meta = encoded("quantize")
    refused(
        payload,
        meta,
        "codec 'quantize' is not allowed here; allowed: ['none', 'topk']",
        allowed={"none", "topk"},
    )
    refused(payload, dataclasses.replace(meta, codec="zip"), "unknown update codec 'zip'")
    with pytest.raises(CodecError, match="unknown update codec 'zip'"):
        # The wire schema already refuses the name; a config built around it still fails.
        encode_update(
            DIFF, CodecConfig.model_construct(QuantizeCodec.model_construct(name="zip")), seed=1
        )


def test_codec_params_of_another_codec_are_refused() -> None:
    payload, meta = encoded("topk")
    refused(
        payload,
        dataclasses.replace(meta, codec="quantize"),
        "bundle says codec 'quantize' but its codec_params describe 'topk'",
    )
    refused(
        payload,
        dataclasses.replace(meta, codec="none"),
        "bundle says codec 'none' but its codec_params describe 'topk'",
    )


@pytest.mark.parametrize(
    ("claimed", "carried", "fragment"),
    [
        (
            "quantize",
            "topk",
            "missing ['w#q', 'w#q_hi', 'w#q_lo']; unexpected ['w#topk_idx', 'w#topk_val']",
        ),
        ("subsample", "randmask", "missing ['w#sub']; unexpected ['w#mask']"),
        ("randmask", "subsample", "missing ['w#mask']; unexpected ['w#sub']"),
        ("lowrank", "quantize", "missing ['w#lr_a']"),
        ("none", "topk", "missing ['w']"),
    ],
)
def test_a_payload_of_another_codec_is_refused(claimed: str, carried: str, fragment: str) -> None:
    """Even with a self-consistent header for the claimed codec, the arrays give it away."""
    payload, _ = encoded(carried)
    _, meta = encoded(claimed)
    refused(payload, meta, f"payload does not match codec '{claimed}': {fragment}")


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("quantize", {"bits": 4, "rotate": True}),
        ("quantize", {"bits": 2}),
        ("subsample", {"p": 0.5}),
        ("randmask", {"p": 0.5}),
        ("lowrank", {"rank": 3}),
        ("topk", {"fraction": 0.1}),
    ],
)
def test_a_wrong_seed_is_detected(name: str, params: dict[str, Any]) -> None:
    payload, meta = encoded(name, params, seed=5)
    decode_update(payload, meta, EXPECTED, seed=5)  # the honest update decodes
    refused(payload, meta, "update was encoded with seed 5, expected seed 6", seed=6)
    refused(payload, with_params(meta, seed=6), "checksum mismatch")
    # Header and payload of two encodes under different seeds: same shapes, wrong pairing.
    _, other = encoded(name, params, seed=6)
    if name == "topk":  # top-k uses no randomness: its payload is the same under any seed
        decode_update(payload, other, EXPECTED)
    else:
        refused(payload, other, "checksum mismatch")


def test_mismatched_sizes_and_dtypes_are_refused() -> None:
    payload, meta = encoded("quantize", {"bits": 4})
    bigger = {**EXPECTED, "w": ((64, 16, 3, 3), "float32")}
    refused(payload, meta, "w#q: expected uint8[4608], got uint8[2560]", expected=bigger)
    refused(
        {**payload, "w#q": payload["w#q"][:-1]}, meta, "w#q: expected uint8[2560], got uint8[2559]"
    )
    refused(
        {**payload, "w#q_lo": payload["w#q_lo"].astype(np.float64)},
        meta,
        "w#q_lo: expected float32[5], got float64[5]",
    )
    refused(
        {**payload, "b": np.zeros(31, np.float32)}, meta, "b: expected float32[32], got float32[31]"
    )
    refused({k: v for k, v in payload.items() if k != "n"}, meta, "missing ['n']")
    refused({**payload, "extra": np.zeros(1, np.float32)}, meta, "unexpected ['extra']")


def test_malformed_codec_params_are_refused() -> None:
    payload, meta = encoded("quantize", {"bits": 4})
    refused(payload, with_params(meta, version=2), "codec 'quantize' version 2 is not supported")
    refused(payload, with_params(meta, params={"bits": 3}), "'bits' must be 1, 2, 4 or 8, got 3")
    refused(payload, with_params(meta, params={"bitz": 4}), "has no parameter(s) ['bitz']")
    refused(payload, with_params(meta, seed=-1), "seed must be an integer in [0, 2^63)")
    refused(payload, with_params(meta, min_size="big"), "min_size must be an integer >= 0")
    refused(payload, with_params(meta, checksum=None), "lack the checksum")
    refused(payload, with_params(meta, params={"bits": 8}), "payload does not match codec")
    refused(
        payload, dataclasses.replace(meta, codec_params=[1]), "codec_params must be a JSON object"
    )


def test_corrupt_parts_are_refused() -> None:
    payload, meta = encoded("topk", {"fraction": 0.1})
    idx = payload["w#topk_idx"].copy()
    idx[[0, 1]] = idx[[1, 0]]
    refused({**payload, "w#topk_idx": idx}, meta, "positions must be strictly increasing")
    idx = payload["w#topk_idx"].copy()
    idx[-1] = W.size
    refused({**payload, "w#topk_idx": idx}, meta, "positions must be strictly increasing")
    payload, meta = encoded("quantize")
    refused({**payload, "w#q_lo": payload["w#q_hi"] + 1}, meta, "block maximum below block minimum")
    altered = payload["w#q"].copy()
    altered[0] ^= 1
    refused({**payload, "w#q": altered}, meta, "checksum mismatch")


@pytest.mark.parametrize(
    ("name", "params", "fragment"),
    [
        ("quantize", {"bits": 3}, "'bits' must be 1, 2, 4 or 8"),
        ("quantize", {"rotate": "yes"}, "'rotate' must be true or false"),
        ("quantize", {"block": 1000}, "'block' must be a power of two"),
        ("quantize", {"block": 4}, "'block' must be an integer in [8, 1048576], got 4"),
        ("subsample", {"p": 0}, "'p' must be a number in (0, 1]"),
        ("randmask", {"p": 1.5}, "'p' must be a number in (0, 1]"),
        ("topk", {"fraction": float("nan")}, "'fraction' must be a number in (0, 1]"),
        ("lowrank", {"rank": 2.5}, "'rank' must be an integer"),
        ("subsample", {"q": 0.1}, "codec 'subsample' has no parameter(s) ['q']; allowed: ['p']"),
    ],
)
def test_bad_parameters_are_refused_by_the_config_and_the_codec(
    name: str, params: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ValidationError) as config_info:  # the wire model (TrainConfig.codec)
        CodecConfig(name=name, params=params)
    assert fragment in str(config_info.value)
    with pytest.raises(CodecError) as codec_info:  # what encode_update and decode_update run
        CODECS[name].resolve(params)
    assert fragment in str(codec_info.value)


def test_bad_encode_inputs_are_refused() -> None:
    with pytest.raises(CodecError, match="codec seed must be an integer"):
        encode_update(DIFF, CodecConfig(name="quantize"), seed=-3)
    with pytest.raises(CodecError, match="contains '#'"):
        encode_update({"w#q": W}, CodecConfig(name="quantize"), seed=1)
    state = {"w": np.zeros(5, np.float32)}
    with pytest.raises(CodecError, match="error-feedback state for 'w' has shape"):
        encode_update(DIFF, CodecConfig(name="topk"), seed=1, state=state)


def test_plain_updates_decode_and_half_precision_raw_tensors_are_cast_back() -> None:
    meta = BundleMeta("0123456789abcdef", 1, BundleKind.DIFF, 4, "none", {})
    out = decode_update(DIFF, meta, EXPECTED, allowed={"none"})
    assert all(np.array_equal(out[k], DIFF[k]) for k in DIFF)
    payload, meta = encoded("quantize")
    half = dataclasses.replace(meta, wire_dtype="float16")
    out = decode_update({**payload, "b": payload["b"].astype(np.float16)}, half, EXPECTED)
    assert out["b"].dtype == np.float32
    refused({**payload, "b": payload["b"].astype(np.float16)}, meta, "b: expected float32[32]")


def test_parameters_keep_their_numbers_as_given_for_the_checksum() -> None:
    # Earlier versions hashed the parameters as the site gave them: an integer 1 must stay 1
    # (json "1", not "1.0"), or bundles they encoded would fail their checksum here.
    resolved = CODECS["subsample"].resolve({"p": 1})
    assert resolved == {"p": 1} and type(resolved["p"]) is int
    assert CODECS["quantize"].resolve({"bits": 4}) == {"bits": 4, "rotate": False, "block": 1024}
    payload, codec_params = encode_update(
        DIFF, CodecConfig(name="subsample", params={"p": 1}), seed=3
    )
    assert codec_params["params"] == {"p": 1}
    meta = BundleMeta("0123456789abcdef", 1, BundleKind.DIFF, 4, "subsample", codec_params)
    dense = decode_update(payload, meta, EXPECTED, seed=3)
    np.testing.assert_array_equal(dense["w"], W)  # p = 1 keeps every entry
