"""Masks as people store them (0/255, 1-bit, inverted) read as classes through the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_specs.constants import SplitName, ValidationCheck
from data_specs.errors import ManifestError
from data_specs.imaging.datasets import build_dataset
from data_specs.imaging.imageio import read_image
from data_specs.imaging.label_mapping import LabelMapping
from data_specs.manifests.manifest import load_manifest, parse_manifest
from data_specs.manifests.validate import validate_manifest
from data_specs.task_spec import TaskSpec
from tests.data_specs.tiny_data import tree_digest


def photo_site(root: Path, *, mask_kind: str, n: int = 3, **manifest: object) -> Path:
    """JPEG / TIFF photographs with masks stored as ``mask_kind``: 0/255 PNG, 1-bit PNG, GIF,
    or ``inverted`` (0 = organ, 255 = background)."""
    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(n):
        rng = np.random.default_rng(i)
        organ = np.zeros((20, 28), bool)
        organ[4 : 10 + i, 6:15] = True
        pic = (rng.integers(0, 40, (20, 28)) + 150 * organ).astype(np.uint8)
        image = f"{i}_scan.tif" if i % 2 else f"{i}.jpg"
        Image.fromarray(np.stack([pic] * 3, axis=-1)).save(root / image)
        if mask_kind == "1bit":
            label = f"{i}_mask.png"
            Image.fromarray(organ).convert("1").save(root / label)
        elif mask_kind == "gif":
            label = f"{i}_annotation.gif"
            Image.fromarray((organ * 255).astype(np.uint8)).save(root / label)
        else:
            stored = ~organ if mask_kind == "inverted" else organ
            label = f"{i}_mask.png"
            Image.fromarray((stored * 255).astype(np.uint8)).save(root / label)
        cases.append({"image": image, "label": label})
    data = {
        "name": "photos",
        "site_id": "h1",
        "spatial_dims": 2,
        "modality": {"0": "R", "1": "G", "2": "B"},
        "labels": {"0": "background", "1": "organ"},
        "training": cases,
        **manifest,
    }
    (root / "dataset.json").write_text(json.dumps(data))
    return root / "dataset.json"


def test_mapping_applies_from_the_stored_values_and_binarize_comes_last() -> None:
    mapping = LabelMapping(label_map=((0, 1), (1, 2), (255, 0)))
    np.testing.assert_array_equal(mapping.apply(np.array([0, 1, 255, 7])), [1, 2, 0, 7])
    binary = LabelMapping(binarize=True)
    np.testing.assert_array_equal(binary.apply(np.array([0, 1, 255, 3])), [0, 1, 1, 1])
    assert LabelMapping.from_manifest(None, False) is None
    assert LabelMapping.from_manifest({"255": 1}, False) == LabelMapping(label_map=((255, 1),))


@pytest.mark.parametrize(
    ("kind", "rule"),
    [
        ("0255", {"label_map": {"255": 1}}),
        ("1bit", {"binarize": True}),
        ("gif", {"binarize": True}),  # a grey GIF keeps palette indices 0/1
        ("inverted", {"label_map": {"0": 1, "255": 0}}),
    ],
)
def test_stored_masks_validate_and_train_as_classes_without_being_rewritten(
    tmp_path: Path, kind: str, rule: dict[str, object]
) -> None:
    manifest_path = photo_site(tmp_path, mask_kind=kind, **rule)
    before = tree_digest(tmp_path)
    report = validate_manifest(manifest_path, workers=1)
    assert report.ok, report.problems
    assert report.warnings == []
    hist = next(iter(report.histograms.values()))
    assert set(hist) == ({0, 1} if kind == "gif" else {0, 255})  # as stored, before mapping

    manifest = load_manifest(manifest_path)
    case = manifest.resolve(next(manifest.iter_cases("training")))
    label = read_image(case.label, label=True, mapping=manifest.label_mapping)
    organ = np.zeros((28, 20), bool)
    organ[6:15, 4:10] = True  # (x, y): columns 6..14, rows 4..9
    np.testing.assert_array_equal(label.array[0], organ.astype(np.int32))

    spec = TaskSpec(in_channels=3, out_channels=2, patch_size=(32, 32))
    items = build_dataset(manifest, spec, SplitName.TRAINING, fit="crop", workers=1)
    values = set()
    for item in items:  # type: ignore[attr-defined]
        values |= set(np.unique(item["label"].numpy()).tolist())
    assert values == {0, 1}
    assert tree_digest(tmp_path) == before  # read, never written back


def test_unmapped_masks_are_refused_with_a_hint(tmp_path: Path) -> None:
    report = validate_manifest(photo_site(tmp_path, mask_kind="0255"), workers=1)
    problems = [p for p in report.problems if p.check == ValidationCheck.LABELS]
    assert len(problems) == 3
    assert "undeclared values [255]" in problems[0].found and "label_map" in problems[0].found


def test_an_inverted_mask_read_as_is_warns_about_its_foreground(tmp_path: Path) -> None:
    report = validate_manifest(
        photo_site(tmp_path, mask_kind="inverted", label_map={"255": 1}), workers=1
    )
    assert report.ok  # values are fine; the share is what looks wrong
    warned = [w for w in report.warnings if w.check == ValidationCheck.FOREGROUND]
    assert len(warned) == 3 and "inverted" in warned[0].found


def test_a_mask_without_any_foreground_anywhere_warns(tmp_path: Path) -> None:
    report = validate_manifest(
        photo_site(tmp_path, mask_kind="0255", label_map={"255": 0}), workers=1
    )
    assert any("background only" in w.found for w in report.warnings)


def test_label_map_targets_must_be_declared_classes() -> None:
    base = {
        "name": "x",
        "site_id": "s",
        "spatial_dims": 2,
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "organ"},
        "training": [{"image": "a.png", "label": "b.png"}],
    }
    with pytest.raises(ManifestError, match="label_map targets"):
        parse_manifest({**base, "label_map": {"255": 3}})
    with pytest.raises(ManifestError, match="integer stored values"):
        parse_manifest({**base, "label_map": {"white": 1}})
