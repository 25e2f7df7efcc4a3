"""Manifests for existing folders: a hospital's scans, and the real ACDC federation (if present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_specs.constants import SplitName
from data_specs.errors import ManifestError
from data_specs.imaging.datasets import build_dataset
from data_specs.imaging.imageio import read_image
from data_specs.imaging.transforms import prepare_scan
from data_specs.manifests.manifest import load_manifest, save_manifest
from data_specs.manifests.validate import validate_manifest
from data_specs.sources.acdc import ACDC_GROUPS, acdc_manifests, folder_manifest, write_manifests
from data_specs.task_spec import TaskSpec
from tests.data_specs.tiny_data import LABELS, shared_acdc, write_pair

ACDC = shared_acdc()
needs_acdc = pytest.mark.skipif(
    not (ACDC / "frames.csv").is_file(),
    reason=f"real ACDC data not found at {ACDC} (set FEDSEG_SHARED_DATA to the shared data folder)",
)


def _hospital(folder: Path, patients: int = 5) -> None:
    """patientN_a / patientN_b with _gt labels side by side, plus one unlabelled scan."""
    for p in range(patients):
        for frame in ("a", "b"):
            write_pair(folder, f"patient{p}_{frame}", seed=p)
    for sub in ("images", "labels"):
        for path in (folder / sub).iterdir():
            target = folder / (
                path.name if sub == "images" else path.name.replace(".nii.gz", "_gt.nii.gz")
            )
            path.rename(target)
        (folder / sub).rmdir()
    (folder / "patient0_b_gt.nii.gz").rename(folder / "orphan.nii.gz")  # no label for it
    (folder / "patient0_b.nii.gz").unlink()


def test_folder_manifest_pairs_scans_groups_patients_and_keeps_unlabelled_for_test(
    tmp_path: Path,
) -> None:
    data = tmp_path / "site"
    _hospital(data)
    m = folder_manifest(
        data,
        out=data / "dataset.json",
        site_id="h1",
        labels=dict(LABELS),
        spatial_dims=2,
        group_pattern=r"patient\d+",
    )
    save_manifest(m, data / "dataset.json")
    assert m.data_root is None  # the scans sit inside the manifest's folder
    labelled = [c for s in SplitName for c in m.iter_cases(s) if c.label is not None]
    assert len(labelled) == 9 and all(
        c.label == c.image.replace(".nii.gz", "_gt.nii.gz") for c in labelled
    )
    assert [c.image for c in m.iter_cases("test") if c.label is None] == ["orphan.nii.gz"]
    for split in SplitName:
        patients = {c.image.split("_")[0] for c in m.iter_cases(split) if c.label}
        others = {
            c.image.split("_")[0]
            for s in SplitName
            if s != split
            for c in m.iter_cases(s)
            if c.label
        }
        assert not patients & others
    assert validate_manifest(data / "dataset.json", workers=1).ok


def test_folder_manifest_uses_data_root_for_scans_elsewhere(tmp_path: Path) -> None:
    data = tmp_path / "mount"
    _hospital(data)
    (tmp_path / "config").mkdir()
    out = tmp_path / "config" / "dataset.json"
    m = folder_manifest(data, out=out, site_id="h1", labels=dict(LABELS), spatial_dims=2)
    save_manifest(m, out)
    assert m.data_root == str(data.resolve())
    assert load_manifest(out).resolve(m.training[0]).image.parent == data.resolve()
    assert validate_manifest(out, workers=1).ok


def test_folder_manifest_without_labels_is_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "site"
    _hospital(data)
    with pytest.raises(ManifestError, match="no labels"):
        folder_manifest(
            data,
            out=data / "d.json",
            site_id="h",
            labels=dict(LABELS),
            spatial_dims=2,
            label_suffix="_seg",
        )
    with pytest.raises(ManifestError, match=r"label values 0\.\.n-1"):
        folder_manifest(
            data, out=data / "d.json", site_id="h", labels={"0": "bg", "3": "x"}, spatial_dims=2
        )
    assert not (data / "d.json").exists()


def test_missing_frames_csv_is_a_manifest_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"frames\.csv"):
        acdc_manifests(tmp_path)


@needs_acdc
@pytest.mark.slow
def test_acdc_becomes_five_valid_sites_split_by_patient(tmp_path: Path) -> None:
    manifests = acdc_manifests(ACDC, seed=0)
    assert sorted(m.name for m in manifests) == [f"ACDC-{g}" for g in ACDC_GROUPS]
    paths = write_manifests(manifests, tmp_path)
    for m in manifests:
        splits = {s: [c.image[:10] for c in m.iter_cases(s)] for s in SplitName}
        assert sum(len(v) for v in splits.values()) == 40
        assert [len(splits[s]) for s in SplitName] == [24, 8, 8]
        assert not set(splits[SplitName.TRAINING]) & set(splits[SplitName.TEST])
        assert not set(splits[SplitName.VALIDATION]) & set(splits[SplitName.TEST])
    report = validate_manifest(paths[0])
    assert report.ok, report.problems
    assert report.files == 80


@needs_acdc
def test_a_real_acdc_frame_through_the_2d_pipeline(tmp_path: Path) -> None:
    (path, *_) = write_manifests(acdc_manifests(ACDC), tmp_path)
    m = load_manifest(path)
    m.training = m.training[:2]
    spec = TaskSpec(out_channels=4, patch_size=(128, 128))
    ds = build_dataset(m, spec, "training", train=True, seed=0, foreground_only=True)
    depth = sum(read_image(m.resolve(c).image).spatial_shape[2] for c in m.training)
    assert 0 < len(ds) <= depth
    item = ds[0]
    assert item["image"].shape == (1, 128, 128) and item["label"].shape == (1, 128, 128)
    assert set(item["label"].unique().tolist()) <= {0, 1, 2, 3}
    assert item["label"].any()

    scan_path = m.resolve(m.training[0]).image
    scan = prepare_scan(scan_path, spec)
    ref = read_image(scan_path)
    assert scan.sliced and scan.image.shape == ref.array.shape
    np.testing.assert_allclose(scan.geometry.affine, ref.affine)
    truth = read_image(m.resolve(m.training[0]).label, label=True).array  # type: ignore[arg-type]
    scan.write_mask(truth, tmp_path / "mask.nii.gz")
    assert np.array_equal(read_image(tmp_path / "mask.nii.gz", label=True).array, truth)


def _fake_acdc(folder: Path, patients_per_group: int = 4) -> None:
    """frames.csv plus empty frame files: enough for the manifests (nothing is read)."""
    lines = ["frame,patient,group"]
    n = 0
    for group in ACDC_GROUPS:
        for _ in range(patients_per_group):
            n += 1
            for frame in ("01", "12"):
                name = f"patient{n:03d}_frame{frame}"
                lines.append(f"{name},patient{n:03d},{group}")
                (folder / f"{name}.nii.gz").write_bytes(b"")
                (folder / f"{name}_gt.nii.gz").write_bytes(b"")
    (folder / "frames.csv").write_text("\n".join(lines) + "\n")


def test_an_explicit_patient_assignment_decides_every_split(tmp_path: Path) -> None:
    _fake_acdc(tmp_path)
    assignment = {
        "patient001": SplitName.TEST,
        "patient002": SplitName.VALIDATION,
        "patient003": SplitName.TRAINING,
        "patient005": SplitName.TRAINING,
    }  # patient004 and the other groups' patient006.. are left out
    manifests = acdc_manifests(tmp_path, assignment=assignment)
    by_site = {m.site_id: m for m in manifests}
    dcm, hcm = by_site["acdc_dcm"], by_site["acdc_hcm"]
    assert [c.image for c in dcm.training] == [
        "patient003_frame01.nii.gz",
        "patient003_frame12.nii.gz",
    ]
    assert [c.image for c in dcm.validation or []] == [
        "patient002_frame01.nii.gz",
        "patient002_frame12.nii.gz",
    ]
    assert [c.image for c in dcm.test or []] == [
        "patient001_frame01.nii.gz",
        "patient001_frame12.nii.gz",
    ]
    assert [c.image[:10] for c in hcm.training] == ["patient005", "patient005"]
    assert hcm.validation is None and hcm.test is None
