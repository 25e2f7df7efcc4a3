"""``validate_manifest`` finds every problem at once, names the file, and modifies nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_specs.constants import ValidationCheck
from data_specs.imaging.imageio import write_mask_nifti
from data_specs.manifests.validate import validate_manifest
from tests.data_specs.tiny_data import tiny_site, tree_digest


def _edit(manifest: Path, **changes: object) -> None:
    data = json.loads(manifest.read_text())
    data.update(changes)
    manifest.write_text(json.dumps(data))


def _by_check(report) -> dict[ValidationCheck, list[str]]:  # type: ignore[no-untyped-def]
    out: dict[ValidationCheck, list[str]] = {}
    for p in report.problems:
        out.setdefault(p.check, []).append(p.file)
    return out


def test_a_clean_site_passes_and_counts_what_it_read(tmp_path: Path) -> None:
    report = validate_manifest(tiny_site(tmp_path), workers=1)
    assert report.ok and report.problems == []
    assert report.cases == 5 and report.files == 10


def test_every_problem_is_reported_with_its_file_and_nothing_is_modified(tmp_path: Path) -> None:
    manifest = tiny_site(tmp_path, n_train=8, n_val=1, n_test=1)
    (tmp_path / "images" / "c0.nii.gz").unlink()  # missing
    blob = (tmp_path / "images" / "c1.nii.gz").read_bytes()
    (tmp_path / "images" / "c1.nii.gz").write_bytes(blob[: len(blob) // 3])  # truncated
    write_mask_nifti(
        np.zeros((16, 17), np.uint8), np.diag([1.5, 1.5, 2, 1]), tmp_path / "labels" / "c2.nii.gz"
    )
    write_mask_nifti(
        np.zeros((16, 16), np.uint8), np.diag([1.5, 1.6, 2, 1]), tmp_path / "labels" / "c3.nii.gz"
    )
    bad_values = np.zeros((16, 16), np.uint8)
    bad_values[3, 3], bad_values[4, 4] = 7, 9
    write_mask_nifti(bad_values, np.diag([1.5, 1.5, 2, 1]), tmp_path / "labels" / "c4.nii.gz")
    data = json.loads(manifest.read_text())
    data["training"][6]["image"] = "../outside.nii.gz"
    data["training"][7] = dict(data["training"][5])  # c5 listed twice
    data["test"] = []
    manifest.write_text(json.dumps(data))
    before = tree_digest(tmp_path)

    report = validate_manifest(manifest, workers=1)

    found = _by_check(report)
    assert found[ValidationCheck.EXISTS] == ["images/c0.nii.gz"]
    assert "images/c1.nii.gz" in found[ValidationCheck.READABLE]
    assert found[ValidationCheck.SHAPE] == ["labels/c2.nii.gz"]
    assert found[ValidationCheck.GEOMETRY] == ["labels/c3.nii.gz"]
    assert found[ValidationCheck.LABELS] == ["labels/c4.nii.gz"]
    assert found[ValidationCheck.PATH] == ["../outside.nii.gz"]
    assert found[ValidationCheck.SPLIT] == [str(manifest)]
    assert found[ValidationCheck.DUPLICATE] == ["images/c5.nii.gz", "labels/c5.nii.gz"]
    labels_problem = next(p for p in report.problems if p.check == ValidationCheck.LABELS)
    assert labels_problem.found.startswith('undeclared values [7, 9]; declare "label_map"')
    assert "[0, 1, 2]" in labels_problem.expected
    assert not report.ok
    assert tree_digest(tmp_path) == before


def test_wrong_channel_count_is_reported(tmp_path: Path) -> None:
    manifest = tiny_site(tmp_path)
    _edit(manifest, modality={"0": "T1", "1": "T2"})
    report = validate_manifest(manifest, workers=1)
    problems = [p for p in report.problems if p.check == ValidationCheck.CHANNELS]
    assert len(problems) == 5
    assert problems[0].expected.startswith("2 channel") and problems[0].found.startswith(
        "1 channel"
    )


def test_a_2d_image_for_a_3d_task_is_reported(tmp_path: Path) -> None:
    manifest = tiny_site(tmp_path)
    _edit(manifest, spatial_dims=3)
    report = validate_manifest(manifest, workers=1)
    assert {p.check for p in report.problems} == {ValidationCheck.DIMS}


def test_empty_training_split_is_reported(tmp_path: Path) -> None:
    manifest = tiny_site(tmp_path)
    # Without test or adaptation scans an empty training split is not an outside site either.
    _edit(manifest, training=[], test=None)
    report = validate_manifest(manifest, workers=1)
    assert [p.check for p in report.problems] == [ValidationCheck.SPLIT]
    assert "training" in report.problems[0].expected


def test_an_outside_site_with_unlabelled_scans_only_is_valid(tmp_path: Path) -> None:
    manifest = tiny_site(tmp_path, n_train=2, n_val=0, n_test=1)
    data = json.loads(manifest.read_text())
    images = [c["image"] for c in data["training"]]
    for key in ("training", "validation"):
        data.pop(key, None)
    data["test"] = [{"image": c["image"]} for c in data["test"]]  # labels dropped
    data["adaptation"] = images
    manifest.write_text(json.dumps(data))
    report = validate_manifest(manifest, workers=1)
    assert report.ok, report.problems
    assert report.cases == 3 and report.files == 3  # images only, each one read
    _edit(manifest, training=[])  # written as an empty list: the same
    assert validate_manifest(manifest, workers=1).ok


def test_an_outside_site_manifest_is_checked_like_any_other(tmp_path: Path) -> None:
    manifest = tiny_site(tmp_path, n_train=2, n_val=0, n_test=0)
    data = json.loads(manifest.read_text())
    images = [c["image"] for c in data.pop("training")]
    data["adaptation"] = [*images, "images/missing.nii.gz"]
    data["modality"] = {"0": "MRI", "1": "T2"}  # two channels declared, the scans have one
    manifest.write_text(json.dumps(data))
    checks = _by_check(validate_manifest(manifest, workers=1))
    assert checks[ValidationCheck.EXISTS] == ["images/missing.nii.gz"]
    assert sorted(checks[ValidationCheck.CHANNELS]) == sorted(images)
    _edit(manifest, adaptation=[])
    report = validate_manifest(manifest, workers=1)
    assert {p.check for p in report.problems} == {ValidationCheck.SPLIT}
    assert any("adaptation" in p.expected for p in report.problems)


def test_a_manifest_that_does_not_load_is_one_problem(tmp_path: Path) -> None:
    path = tmp_path / "dataset.json"
    path.write_text("{not json")
    report = validate_manifest(path)
    assert [p.check for p in report.problems] == [ValidationCheck.MANIFEST]
    assert "expected JSON" in report.problems[0].found


@pytest.mark.slow
def test_process_pool_finds_the_same_problems_as_one_process(tmp_path: Path) -> None:
    manifest = tiny_site(tmp_path, n_train=10, n_val=2, n_test=2)
    bad = np.zeros((16, 16), np.uint8)
    bad[0, 0] = 5
    write_mask_nifti(bad, np.diag([1.5, 1.5, 2, 1]), tmp_path / "labels" / "c11.nii.gz")
    one = validate_manifest(manifest, workers=1)
    pool = validate_manifest(manifest, workers=2)
    assert pool.problems == one.problems and len(one.problems) == 1
    assert one.problems[0].file == "labels/c11.nii.gz"
