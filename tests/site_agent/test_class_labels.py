"""``fedseg site infer`` names classes from the manifest, else from the model's bundle, else ``class k``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_specs.task_spec import TaskSpec
from data_specs.weights.bundle import BundleMeta, encode_bundle
from data_specs.weights.routing_bundle import encode_routing_bundle
from data_specs.weights.unet_layout import unet_layout
from site_agent.clinic.class_labels import bundle_class_names, segment_names
from site_agent.clinic.models import save_global
from site_agent.federation.workdir import WorkDir

SPEC = TaskSpec(out_channels=3, channels=(4, 8), strides=(2,), patch_size=(16, 16))
NAMES = ("background", "RV", "LV")


def _tensors() -> dict[str, np.ndarray]:
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in unet_layout(SPEC).items()}


def _global(work: WorkDir, names: tuple[str, ...] = NAMES) -> None:
    meta = BundleMeta(spec_hash=SPEC.spec_hash(), round=2, class_names=names)
    save_global(work, "exp-1", 2, SPEC, encode_bundle(_tensors(), meta))


def test_the_global_models_names_label_the_classes(tmp_path: Path) -> None:
    work = WorkDir(tmp_path / "w")
    assert segment_names(3, labels=None, workdir=work, experiment_id=None) == {
        1: "class 1",
        2: "class 2",
    }
    _global(work)
    assert bundle_class_names(work, None) == NAMES  # the only experiment
    assert segment_names(3, labels=None, workdir=work, experiment_id="exp-1") == {1: "RV", 2: "LV"}
    # A manifest's labels are the site's own words and win.
    got = segment_names(3, labels={"1": "right ventricle"}, workdir=work, experiment_id=None)
    assert got == {1: "right ventricle", 2: "LV"}


def test_an_outside_sites_routing_bundle_and_a_weights_file_carry_names(tmp_path: Path) -> None:
    work = WorkDir(tmp_path / "w")
    path = work.routing_path("exp-9")
    path.parent.mkdir(parents=True)
    path.write_bytes(
        encode_routing_bundle(
            [_tensors()],
            [{"source": "global", "name": "global", "round": 1}],
            SPEC,
            class_names=NAMES,
        )
    )
    assert bundle_class_names(work, "exp-9") == NAMES
    weights = tmp_path / "other.safetensors"
    weights.write_bytes(
        encode_bundle(
            _tensors(),
            BundleMeta(spec_hash=SPEC.spec_hash(), round=1, class_names=("bg", "a", "b")),
        )
    )
    assert bundle_class_names(work, "exp-9", weights) == ("bg", "a", "b")


def test_an_unreadable_bundle_only_costs_the_names(tmp_path: Path) -> None:
    work = WorkDir(tmp_path / "w")
    _global(work)
    work.global_path("exp-1").write_bytes(b"\xff" * 40)
    assert bundle_class_names(work, "exp-1") == ()
