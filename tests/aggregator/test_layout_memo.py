"""An update whose parsed layout already passed against the experiment's layout is not walked again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aggregator.rounds import validation
from aggregator.storage.bundle_views import BundleViews
from data_specs.constants import BundleKind
from data_specs.errors import BundleError
from data_specs.weights.bundle import BundleMeta, encode_bundle


def _views(tmp_path: Path, num_samples: int, shape: tuple[int, ...] = (4, 4)) -> BundleViews:
    meta = BundleMeta(spec_hash="s", round=1, kind=BundleKind.FULL, num_samples=num_samples)
    body = encode_bundle({"w": np.zeros(shape, np.float32)}, meta)
    return BundleViews(tmp_path / "x", data=body)


def test_a_layout_that_passed_is_not_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = validation.check_tensors

    def counted(*args: object) -> None:
        calls.append(1)
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(validation, "check_tensors", counted)
    validation._LAYOUTS_PASSED.clear()
    expected = {"w": ((4, 4), "float32")}
    for n in (1, 2, 3):  # three sites: other sample counts, one layout
        validation._check_layout(_views(tmp_path, n), expected)
    assert len(calls) == 1
    validation._check_layout(_views(tmp_path, 1), dict(expected))  # another experiment's
    assert len(calls) == 2


def test_a_layout_that_failed_fails_every_time(tmp_path: Path) -> None:
    validation._LAYOUTS_PASSED.clear()
    expected = {"w": ((4, 4), "float32")}
    for _ in range(2):
        with pytest.raises(BundleError):
            validation._check_layout(_views(tmp_path, 1, shape=(4, 5)), expected)
