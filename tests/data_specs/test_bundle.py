"""The weights bundle codec: round trip, byte stability, and every refusal."""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from data_specs.constants import BundleKind
from data_specs.errors import BundleError, SpecMismatchError
from data_specs.task_spec import TaskSpec, expected_tensors
from data_specs.weights.bundle import (
    BundleMeta,
    canonical_safetensors,
    canonical_save,
    decode_bundle,
    encode_bundle,
    open_bundle,
    read_header,
    sha256_hex,
)

SPEC = TaskSpec(channels=(4, 8), strides=(2,), patch_size=(16, 16))


def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for name, (shape, dtype) in expected_tensors(SPEC).items():
        out[name] = (rng.standard_normal(shape) if dtype == "float32" else np.zeros(shape)).astype(
            dtype
        )
    return out


def _meta(**kw: object) -> BundleMeta:
    base: dict[str, object] = {
        "spec_hash": SPEC.spec_hash(),
        "round": 3,
        "kind": BundleKind.DIFF,
        "num_samples": 12,
    }
    return BundleMeta(**{**base, **kw})  # type: ignore[arg-type]


def test_round_trip_keeps_tensors_metadata_and_0d_counters() -> None:
    weights = _weights()
    data = encode_bundle(weights, _meta(codec_params={"bits": 4}))
    bundle = decode_bundle(data, expected=expected_tensors(SPEC), spec_hash=SPEC.spec_hash())
    assert bundle.meta == _meta(codec_params={"bits": 4})
    for k, v in weights.items():
        np.testing.assert_array_equal(bundle.tensors[k], v)
        assert bundle.tensors[k].shape == v.shape  # 0-d num_batches_tracked stays 0-d


def test_encoding_is_byte_stable() -> None:
    weights = _weights()
    digests = {
        sha256_hex(encode_bundle(dict(reversed(list(weights.items()))), _meta())) for _ in range(5)
    }
    digests.add(sha256_hex(encode_bundle(weights, _meta())))
    assert len(digests) == 1


def _library_bytes(arrays: dict[str, np.ndarray], metadata: dict[str, str] | None) -> bytes:
    """What the bundle codec wrote before ``canonical_save``: safetensors' own ``save``."""
    contiguous = {k: v if v.flags.c_contiguous else v.copy(order="C") for k, v in arrays.items()}
    return canonical_safetensors(st_save(contiguous, metadata=metadata))


def _every_dtype() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    arrays: dict[str, np.ndarray] = {}
    dtypes = ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint64")
    for i, dtype in enumerate((*dtypes, "uint32", "uint16", "uint8", "bool")):
        values = rng.integers(0, 100, size=(3, 5)).astype(dtype)
        arrays[f"z{i}.{dtype}"] = values  # names that sort against the data order
        arrays[f"a{i}.{dtype}"] = values[:, ::2]  # not contiguous
        arrays[f"m{i}.{dtype}.0d"] = np.asarray(values[0, 0])
        arrays[f"e{i}.{dtype}.empty"] = np.zeros((0, 4), dtype=dtype)
    arrays["caf\u00e9.weight"] = np.ones(2, dtype=np.float32)  # escaped in the header, as JSON does
    return arrays


@pytest.mark.parametrize("metadata", [None, {"z": "1", "a": "2", "\u00e9": "3"}])
def test_canonical_save_writes_the_bytes_safetensors_writes(
    metadata: dict[str, str] | None,
) -> None:
    arrays = _every_dtype()
    data = canonical_save(arrays, metadata)
    assert data == _library_bytes(arrays, metadata)
    loaded = st_load(data)
    assert list(loaded) != list(arrays)  # the data order is safetensors', not the dict's
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
        np.testing.assert_array_equal(loaded[name], array)


def test_metadata_must_map_strings_to_strings_as_safetensors_says() -> None:
    arrays = {"w": np.zeros(2, dtype=np.float32)}
    for metadata in ({"round": 3}, {3: "round"}):
        with pytest.raises(TypeError):
            st_save(arrays, metadata=metadata)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="str to str"):
            canonical_save(arrays, metadata)  # type: ignore[arg-type]


def test_big_endian_arrays_go_the_librarys_way_and_read_back_the_same() -> None:
    arrays = {"w": np.arange(6, dtype=">f4").reshape(2, 3), "b": np.arange(3, dtype=np.int64)}
    data = canonical_save(arrays, {"k": "v"})
    assert data == _library_bytes(arrays, {"k": "v"})
    np.testing.assert_array_equal(st_load(data)["w"], arrays["w"])


def test_spec_hash_and_shape_and_key_mismatches_are_refused() -> None:
    weights = _weights()
    expected = expected_tensors(SPEC)
    with pytest.raises(SpecMismatchError, match="expected deadbeef"):
        decode_bundle(encode_bundle(weights, _meta()), spec_hash="deadbeef")
    extra = {**weights, "intruder": np.zeros(2, np.float32)}
    with pytest.raises(SpecMismatchError, match=r"unknown keys.*intruder"):
        decode_bundle(encode_bundle(extra, _meta()), expected=expected)
    missing = dict(list(weights.items())[1:])
    with pytest.raises(SpecMismatchError, match="missing keys"):
        decode_bundle(encode_bundle(missing, _meta()), expected=expected)
    first = next(iter(weights))
    reshaped = {**weights, first: weights[first].reshape(-1)}
    with pytest.raises(SpecMismatchError, match="expected shape"):
        decode_bundle(encode_bundle(reshaped, _meta()), expected=expected)
    retyped = {**weights, first: weights[first].astype(np.float64)}
    with pytest.raises(SpecMismatchError, match="expected dtype float32"):
        decode_bundle(encode_bundle(retyped, _meta()), expected=expected)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_on_both_sides(bad: float) -> None:
    weights = _weights()
    first = next(iter(weights))
    weights[first].flat[0] = bad
    with pytest.raises(BundleError, match="non-finite"):
        encode_bundle(weights, _meta())
    # A peer that skipped the check: the decoder refuses too.
    from safetensors.numpy import save

    with pytest.raises(BundleError, match="non-finite"):
        decode_bundle(save(weights, metadata=_meta().to_header()))


def test_not_safetensors_truncated_and_pickle_are_refused() -> None:
    data = encode_bundle(_weights(), _meta())
    for junk in (b"", b"short", pickle.dumps({"a": 1}), data[: len(data) // 2], b"\xff" * 64):
        with pytest.raises(BundleError):
            decode_bundle(junk)
    header = json.dumps({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    no_meta = struct.pack("<Q", len(header)) + header + b"\0" * 4
    with pytest.raises(BundleError, match="not a fedseg weights bundle"):
        decode_bundle(no_meta)


def test_malformed_metadata_is_refused() -> None:
    header = _meta().to_header()
    header["round"] = "-1"
    from safetensors.numpy import save

    with pytest.raises(BundleError, match=r"round in \[0, "):
        decode_bundle(save(_weights(), metadata=header))
    header["round"] = "three"
    with pytest.raises(BundleError, match="malformed"):
        decode_bundle(save(_weights(), metadata=header))


def test_half_precision_downlink_is_cast_back() -> None:
    weights = _weights()
    half = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in weights.items()}
    data = encode_bundle(half, _meta(wire_dtype="float16"))
    bundle = decode_bundle(data, expected=expected_tensors(SPEC))
    first = next(iter(weights))
    assert bundle.tensors[first].dtype == np.float32
    np.testing.assert_allclose(bundle.tensors[first], weights[first], rtol=1e-3, atol=1e-3)


def test_open_bundle_reads_one_tensor_at_a_time(tmp_path) -> None:  # type: ignore[no-untyped-def]
    weights = _weights()
    path = tmp_path / "w.safetensors"
    path.write_bytes(encode_bundle(weights, _meta()))
    with open_bundle(path) as (meta, handle):
        assert meta.num_samples == 12
        first = next(iter(weights))
        np.testing.assert_array_equal(handle.get_tensor(first), weights[first])
    assert read_header(path.read_bytes())["__metadata__"]["fedseg_format"] == "1"
