"""``BundleViews``: a header is parsed once per distinct header; small files are read, not mapped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aggregator.storage import bundle_views
from aggregator.storage.bundle_views import BundleViews
from data_specs.constants import BundleKind
from data_specs.errors import BundleError
from data_specs.weights.bundle import BundleMeta, encode_bundle


def _bundle(value: float, num_samples: int = 3) -> bytes:
    meta = BundleMeta(spec_hash="s", round=1, kind=BundleKind.FULL, num_samples=num_samples)
    return encode_bundle(
        {"w": np.full((4, 4), value, np.float32), "b": np.ones(4, np.float32)}, meta
    )


def _count_parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = bundle_views.parse_header

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(bundle_views, "parse_header", counted)
    for cached in (bundle_views._whole, bundle_views._tensor_entries, bundle_views._metadata):
        cached.cache_clear()
    return calls


def test_a_header_seen_before_is_not_parsed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_parses(monkeypatch)
    body = _bundle(1.0)
    path = tmp_path / "u"
    path.write_bytes(body)
    first = BundleViews(path, data=body)  # intake, on the upload's bytes
    second = BundleViews(path)  # aggregation, on the stored file
    assert len(calls) == 1
    assert first.meta == second.meta and first.meta.num_samples == 3
    assert np.array_equal(second["w"], np.full((4, 4), 1.0, np.float32))
    other = tmp_path / "v"
    other.write_bytes(_bundle(2.0))  # the same header, other tensor values
    assert float(BundleViews(other)["w"][0, 0]) == 2.0 and len(calls) == 1
    BundleViews(tmp_path / "u", data=_bundle(1.0, num_samples=4))  # other metadata only
    assert len(calls) == 1


def test_a_bad_header_fails_every_time(tmp_path: Path) -> None:
    body = bytearray(_bundle(1.0))
    body[-1:] = b""  # truncated data: the offsets no longer tile it
    path = tmp_path / "bad"
    path.write_bytes(bytes(body))
    for _ in range(2):
        with pytest.raises(BundleError):
            BundleViews(path)


def test_small_files_are_read_and_large_ones_mapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "u"
    path.write_bytes(_bundle(1.0))
    mapped: list[object] = []
    real = np.memmap

    def spy(*args: object, **kwargs: object) -> object:
        mapped.append(args[0])
        return real(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(bundle_views.np, "memmap", spy)
    assert float(BundleViews(path)["b"][0]) == 1.0
    assert mapped == []
    monkeypatch.setattr(bundle_views, "READ_WHOLE_BYTES", 16)
    assert float(BundleViews(path)["b"][0]) == 1.0
    assert mapped == [path]


def test_updates_that_differ_only_in_metadata_share_one_parse_of_their_tensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_parses(monkeypatch)
    views = [BundleViews(tmp_path / "x", data=_bundle(float(n), num_samples=n)) for n in (1, 2, 3)]
    assert [v.meta.num_samples for v in views] == [1, 2, 3]
    assert [float(v["w"][0, 0]) for v in views] == [1.0, 2.0, 3.0]
    assert len(calls) == 1  # the tensor entries, once; each metadata read on its own


def _with_header(body: bytes, header: bytes) -> bytes:
    length = int.from_bytes(body[:8], "little")
    return len(header).to_bytes(8, "little") + header + body[8 + length :]


def test_headers_of_other_shapes_get_the_full_parse(tmp_path: Path) -> None:
    body = _bundle(1.0)
    length = int.from_bytes(body[:8], "little")
    header = body[8 : 8 + length]
    assert header.startswith(b'{"__metadata__":{')
    found = bundle_views._METADATA_FIRST.match(header)
    assert found is not None
    meta_end = found.end()  # just after the comma that ends the metadata
    # a trailing comma before the tensors is not JSON: refused as before
    with pytest.raises(BundleError):
        BundleViews(
            tmp_path / "x", data=_with_header(body, header[:meta_end] + b"," + header[meta_end:])
        )
    # the metadata key written a second time (escaped) among the tensors: the last one counts
    escaped = header[:meta_end] + b'"\\u005f_metadata__":{"x":"y"},' + header[meta_end:]
    with pytest.raises(BundleError, match="not a fedseg weights bundle"):
        BundleViews(tmp_path / "x", data=_with_header(body, escaped))
    # metadata after the tensors, with spaces: read whole, same answer
    tensors = header.rstrip()[meta_end:-1]  # the header is padded with spaces
    moved = b"{ " + tensors + b', "__metadata__": ' + header[16 : meta_end - 1] + b"}"
    views = BundleViews(tmp_path / "x", data=_with_header(body, moved))
    assert views.meta.num_samples == 3 and float(views["w"][1, 1]) == 1.0


def test_float_runs_merge_neighbours_of_one_dtype_and_the_scan_names_the_bad_tensor(
    tmp_path: Path,
) -> None:
    """One run per stretch of same-dtype float tensors; a NaN inside a run is still named."""
    from aggregator.rounds.validation import _scan
    from aggregator.storage.bundle_views import float_runs

    meta = BundleMeta(spec_hash="s", round=1, kind=BundleKind.FULL, num_samples=1)
    tensors: dict[str, np.ndarray] = {
        "a": np.ones(5, np.float32),
        "b": np.ones((2, 3), np.float32),
        "c": np.ones(4, np.float32),
        "half": np.ones(3, np.float16),
        "steps": np.array(2, np.int64),
    }
    path = tmp_path / "u.safetensors"
    path.write_bytes(encode_bundle(tensors, meta))
    views = BundleViews(path)
    runs = float_runs(views.layout)
    assert sorted(r.names for r in runs) == [("a", "b", "c"), ("half",)]
    assert float_runs(views.layout) is runs  # once per layout
    assert _scan(views, None, frozenset()) is None  # all finite

    raw = bytearray(path.read_bytes())
    entry = views.layout["b"]
    start = 8 + int.from_bytes(raw[:8], "little") + entry.start + 4 * 4  # b[1, 1]
    raw[start : start + 4] = np.array([np.nan], np.float32).tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"non-finite.*\['b'\]"):
        _scan(BundleViews(path), None, frozenset())
