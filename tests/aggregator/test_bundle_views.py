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
    bundle_views._layout.cache_clear()
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
    BundleViews(tmp_path / "u", data=_bundle(1.0, num_samples=4))  # another header
    assert len(calls) == 2


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
