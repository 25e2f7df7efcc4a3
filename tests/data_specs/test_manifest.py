"""Dataset manifests: Decathlon compatibility, clear errors, path containment, splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_specs.constants import SplitName
from data_specs.errors import ManifestError
from data_specs.manifests.manifest import (
    CaseEntry,
    DatasetManifest,
    assign_splits,
    load_manifest,
    save_manifest,
)

MSD = {
    "name": "Heart",
    "description": "Left atrium",
    "reference": "King's College London",
    "licence": "CC-BY-SA 4.0",
    "tensorImageSize": "3D",
    "modality": {"0": "MRI"},
    "labels": {"0": "background", "1": "left atrium"},
    "numTraining": 2,
    "numTest": 1,
    "training": [
        {"image": "./imagesTr/la_003.nii.gz", "label": "./labelsTr/la_003.nii.gz"},
        {"image": "./imagesTr/la_004.nii.gz", "label": "./labelsTr/la_004.nii.gz"},
    ],
    "test": ["./imagesTs/la_001.nii.gz"],
    "site_id": "kcl",
    "spatial_dims": 3,
}


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_decathlon_manifest_loads_with_channels_classes_and_bare_test_paths(tmp_path: Path) -> None:
    m = load_manifest(_write(tmp_path / "dataset.json", MSD))
    assert m.channel_names == ["MRI"]
    assert m.num_classes == 2 and m.label_values == [0, 1]
    assert [c.label for c in m.iter_cases("test")] == [None]
    assert m.declared_splits() == [SplitName.TRAINING, SplitName.TEST]
    assert list(m.iter_cases(SplitName.VALIDATION)) == []
    assert m.resolve(m.training[0]).image == (tmp_path / "imagesTr" / "la_003.nii.gz").resolve()


def test_channel_names_and_nnunet_label_direction_are_accepted(tmp_path: Path) -> None:
    data = dict(MSD, labels={"background": 0, "tumour": 1, "oedema": 2})
    data.pop("modality")
    data["channel_names"] = {"1": "T2", "0": "T1"}
    m = load_manifest(_write(tmp_path / "d.json", data))
    assert m.labels == {"0": "background", "1": "tumour", "2": "oedema"}
    assert m.channel_names == ["T1", "T2"] and m.num_channels == 2


def test_save_then_load_round_trips_and_drops_nothing_it_needs(tmp_path: Path) -> None:
    m = load_manifest(_write(tmp_path / "a.json", dict(MSD, target_spacing=[1.0, 1.0, 2.5])))
    (tmp_path / "b").mkdir()
    save_manifest(m, tmp_path / "b" / "dataset.json")
    again = load_manifest(tmp_path / "b" / "dataset.json")
    assert again.model_dump() == m.model_dump()
    assert again.root == (tmp_path / "b").absolute()
    assert not list((tmp_path / "b").glob(".*.tmp"))  # atomic write left no temp file


def test_not_json_names_the_file_and_the_position(tmp_path: Path) -> None:
    path = tmp_path / "dataset.json"
    path.write_text('{"name": "x",\n  oops}')
    with pytest.raises(ManifestError, match=r"dataset\.json: expected JSON.*line 2"):
        load_manifest(path)


def test_missing_manifest_file_is_a_manifest_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"nothing\.json"):
        load_manifest(tmp_path / "nothing.json")


def test_missing_fields_are_each_named(tmp_path: Path) -> None:
    data = {k: v for k, v in MSD.items() if k not in ("site_id", "labels")}
    with pytest.raises(ManifestError) as err:
        load_manifest(_write(tmp_path / "d.json", data))
    assert "missing field 'site_id'" in str(err.value)
    assert "missing field 'labels'" in str(err.value)
    assert "d.json" in str(err.value)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("spatial_dims", 4, "spatial_dims"),
        ("spatial_dims", "three", "spatial_dims"),
        ("training", {"image": "a"}, "training"),
        ("labels", {"0": "background", "2": "gap"}, "0..n-1"),
        ("labels", {"0": "background"}, "n >= 2"),
        ("modality", {"1": "MRI"}, "channel keys"),
        ("target_spacing", [1.0, 1.0], "target_spacing needs 3"),
        ("data_root", "relative/folder", "absolute"),
        ("unknown_field", 1, "unknown_field"),
    ],
)
def test_wrong_types_and_values_say_what_was_expected(
    tmp_path: Path, field: str, value: object, expected: str
) -> None:
    with pytest.raises(ManifestError, match=expected):
        load_manifest(_write(tmp_path / "d.json", dict(MSD, **{field: value})))


def test_training_cases_need_labels(tmp_path: Path) -> None:
    data = dict(MSD, training=[{"image": "a.nii.gz"}])
    with pytest.raises(ManifestError, match="every training case needs a label"):
        load_manifest(_write(tmp_path / "d.json", data))


def test_a_json_array_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="expected a JSON object, found list"):
        load_manifest(_write(tmp_path / "d.json", [MSD]))


@pytest.mark.parametrize(
    "bad", ["/etc/passwd", "../outside.nii.gz", "a/../../b.nii.gz", "C:\\x.nii"]
)
def test_paths_escaping_the_folder_are_refused(tmp_path: Path, bad: str) -> None:
    m = load_manifest(_write(tmp_path / "d.json", MSD))
    with pytest.raises(ManifestError, match="expected"):
        m.resolve(CaseEntry(image=bad))


def test_symlink_resolving_outside_is_refused_and_inside_is_fine(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (tmp_path / "secret.nii.gz").write_bytes(b"x")
    (site / "real.nii.gz").write_bytes(b"x")
    (site / "escape.nii.gz").symlink_to(tmp_path / "secret.nii.gz")
    (site / "alias.nii.gz").symlink_to(site / "real.nii.gz")
    m = load_manifest(_write(site / "dataset.json", MSD))
    with pytest.raises(ManifestError, match="symlink"):
        m.resolve_path("escape.nii.gz")
    assert m.resolve_path("alias.nii.gz") == (site / "real.nii.gz").resolve()


def test_data_root_is_the_containment_root(tmp_path: Path) -> None:
    scans = tmp_path / "mount"
    scans.mkdir()
    m = load_manifest(_write(tmp_path / "d.json", dict(MSD, data_root=str(scans))))
    assert m.resolve_path("a.nii.gz") == (scans / "a.nii.gz").resolve()
    with pytest.raises(ManifestError):
        m.resolve_path("../d.json")


def test_an_unbound_manifest_says_it_has_no_folder() -> None:
    m = DatasetManifest.model_validate(MSD)
    with pytest.raises(ManifestError, match="no folder"):
        m.resolve(m.training[0])


def test_assign_splits_keeps_groups_together_and_every_split_filled() -> None:
    groups = [f"p{i // 2}" for i in range(20)]  # 10 patients, 2 frames each
    splits = assign_splits(groups, val_frac=0.2, test_frac=0.2, seed=3)
    assert sorted(i for s in splits.values() for i in s) == list(range(20))
    for split, idx in splits.items():
        others = {groups[i] for s, o in splits.items() if s != split for i in o}
        assert not {groups[i] for i in idx} & others
    assert [len(splits[s]) for s in SplitName] == [12, 4, 4]
    assert splits == assign_splits(groups, val_frac=0.2, test_frac=0.2, seed=3)
    assert splits != assign_splits(groups, val_frac=0.2, test_frac=0.2, seed=4)


def test_assign_splits_gives_each_split_one_case_when_few() -> None:
    splits = assign_splits(["a", "b", "c"], val_frac=0.2, test_frac=0.2)
    assert [len(splits[s]) for s in SplitName] == [1, 1, 1]
    with pytest.raises(ValueError, match="summing below 1"):
        assign_splits(["a"], val_frac=0.5, test_frac=0.5)


def test_an_outside_site_declares_unlabelled_adaptation_scans_without_training(
    tmp_path: Path,
) -> None:
    data = {k: v for k, v in MSD.items() if k not in ("training", "test")}
    m = load_manifest(_write(tmp_path / "dataset.json", {**data, "adaptation": ["a.nii.gz"]}))
    assert m.training == [] and m.is_outside_site
    assert m.adaptation == [CaseEntry(image="a.nii.gz")]
    assert m.adaptation_cases() == [CaseEntry(image="a.nii.gz")]
    # Without an adaptation list, the test images (labels dropped) are what adaptation reads.
    m = load_manifest(_write(tmp_path / "dataset.json", MSD))
    assert not m.is_outside_site
    assert m.adaptation_cases() == [CaseEntry(image="./imagesTs/la_001.nii.gz")]
    bad = {**data, "adaptation": [{"image": "a.nii.gz", "label": "b.nii.gz"}]}
    with pytest.raises(ManifestError, match="adaptation cases are unlabelled"):
        load_manifest(_write(tmp_path / "dataset.json", bad))
