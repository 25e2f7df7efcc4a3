"""Class names in bundle metadata: checked, byte-stable, read back from a file's header only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_specs.class_names import (
    META_CLASS_NAMES,
    check_class_names,
    decode_class_names,
    foreground_names,
)
from data_specs.errors import BundleError, RoutingBundleError
from data_specs.task_spec import TaskSpec
from data_specs.weights.bundle import BundleMeta, decode_bundle, encode_bundle, read_header
from data_specs.weights.routing_bundle import encode_routing_bundle, read_class_names
from data_specs.weights.unet_layout import unet_layout

SPEC = TaskSpec(out_channels=3, channels=(4, 8), strides=(2,), patch_size=(16, 16))
NAMES = ("background", "Leber", "Tumör")


def _tensors() -> dict[str, np.ndarray]:
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in unet_layout(SPEC).items()}


def test_names_round_trip_through_a_weights_bundle_and_its_file(tmp_path: Path) -> None:
    data = encode_bundle(
        _tensors(), BundleMeta(spec_hash=SPEC.spec_hash(), round=3, class_names=NAMES)
    )
    assert decode_bundle(data).meta.class_names == NAMES
    assert read_header(data)["__metadata__"][META_CLASS_NAMES] == '["background","Leber","Tumör"]'
    path = tmp_path / "g.safetensors"
    path.write_bytes(data)
    assert read_class_names(path) == NAMES
    # Same inputs, same bytes (content-addressed blobs).
    again = encode_bundle(
        _tensors(), BundleMeta(spec_hash=SPEC.spec_hash(), round=3, class_names=NAMES)
    )
    assert again == data


def test_a_bundle_without_names_has_no_key_and_reads_as_none(tmp_path: Path) -> None:
    data = encode_bundle(_tensors(), BundleMeta(spec_hash=SPEC.spec_hash(), round=0))
    assert META_CLASS_NAMES not in read_header(data)["__metadata__"]
    path = tmp_path / "g.safetensors"
    path.write_bytes(data)
    assert read_class_names(path) == ()
    assert decode_bundle(data).meta.class_names == ()


def test_routing_bundles_carry_names_of_every_class() -> None:
    data = encode_routing_bundle(
        [_tensors()], [{"source": "global", "name": "global", "round": 1}], SPEC, class_names=NAMES
    )
    assert (
        decode_class_names(
            read_header(data, max_header_bytes=1 << 26)["__metadata__"][META_CLASS_NAMES]
        )
        == NAMES
    )
    with pytest.raises(RoutingBundleError, match="each of the 3 classes"):
        encode_routing_bundle(
            [_tensors()],
            [{"source": "global", "name": "global", "round": 1}],
            SPEC,
            class_names=NAMES[:2],
        )


@pytest.mark.parametrize(
    "raw", ['"liver"', '["background"]', '["background", 3]', "not json", '["bg", "a\\u0000b"]']
)
def test_malformed_names_in_a_header_are_a_bundle_error(raw: str) -> None:
    with pytest.raises(BundleError, match="class_names"):
        decode_class_names(raw)
    header = {**BundleMeta(spec_hash="x", round=0).to_header(), META_CLASS_NAMES: raw}
    with pytest.raises(BundleError):
        BundleMeta.from_header(header)


def test_check_class_names_strips_and_counts() -> None:
    assert check_class_names([" bg ", "LV"], 2) == ("bg", "LV")
    with pytest.raises(ValueError, match="each of the 4 classes"):
        check_class_names(["bg", "LV"], 4)
    with pytest.raises(ValueError, match="1 to 64"):
        check_class_names(["bg", "x" * 65])


def test_manifest_labels_come_first_then_the_bundle_then_class_k() -> None:
    bundle = ("background", "RV", "myocardium")
    assert foreground_names(4, class_names=bundle) == {1: "RV", 2: "myocardium", 3: "class 3"}
    assert foreground_names(3, labels={"1": "right ventricle"}, class_names=bundle) == {
        1: "right ventricle",
        2: "myocardium",
    }
    assert foreground_names(3) == {1: "class 1", 2: "class 2"}
