"""The dataset fingerprint: aggregates only, computed right from tiny synthetic scans."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from data_specs.imaging.imageio import write_mask_nifti, write_nifti
from data_specs.manifests.fingerprint import (
    DatasetFingerprint,
    FingerprintError,
    ModalityKind,
    compute_fingerprint,
    modality_kind,
    window_percentiles,
)
from data_specs.manifests.manifest import CaseEntry, DatasetManifest, save_manifest

SPACINGS = [0.71, 0.83, 0.97, 1.13, 1.29, 1.41, 1.57]
SHAPES = [(20, 24), (21, 27), (25, 28), (26, 33), (31, 34), (33, 35), (41, 43)]


def write_site(root: Path, n: int = 7, modality: str = "MRI", dims3: bool = False) -> Path:
    """``n`` cases with distinct spacing and shape; foreground 1 = 100 + noise, 2 = 300 + noise."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(n):
        shape = (*SHAPES[i], 3) if dims3 else SHAPES[i]
        label = np.zeros(shape, dtype=np.uint8)
        label[2:8, 3:9] = 1
        label[10:14, 10:13] = 2
        image = rng.normal(0.0, 1.0, shape).astype(np.float32) + 100.0 * (label == 1)
        image += 300.0 * (label == 2)
        affine = np.diag([SPACINGS[i], SPACINGS[i], 5.0, 1.0])
        name = f"patient{9000 + i}"
        write_nifti(image, affine, root / "images" / f"{name}.nii.gz")
        write_mask_nifti(label, affine, root / "labels" / f"{name}.nii.gz")
        cases.append(CaseEntry(image=f"images/{name}.nii.gz", label=f"labels/{name}.nii.gz"))
    manifest = DatasetManifest(
        name="secret-dataset-name",
        site_id="st-elsewhere",
        spatial_dims=2,
        modality={"0": modality},
        labels={"0": "background", "1": "ring", "2": "core"},
        training=cases,
    )
    save_manifest(manifest, root / "dataset.json")
    return root / "dataset.json"


def load(path: Path) -> DatasetManifest:
    from data_specs.manifests.manifest import load_manifest

    return load_manifest(path)


def test_window_percentiles_average_at_least_five_values() -> None:
    values = np.random.default_rng(0).uniform(0, 10, 23)
    ordered = np.sort(values)
    out = window_percentiles(values, (0, 10, 50, 90, 100))
    windows = {round(float(ordered[s : s + 5].mean()), 12) for s in range(len(values) - 4)}
    for v in out:
        assert round(v, 12) in windows  # the mean of 5 neighbouring order statistics
        assert not np.isclose(values, v).any()  # never one case's own value
    assert out == sorted(out)
    few = window_percentiles([1.0, 2.0, 6.0], (10, 50, 90))
    assert few == [3.0, 3.0, 3.0]  # fewer than five: every figure is the mean of all


def test_fingerprint_holds_only_aggregates(tmp_path: Path) -> None:
    manifest = load(write_site(tmp_path / "site"))
    fp = compute_fingerprint(manifest)
    assert fp.num_cases == 7 and fp.window_cases == 5 and fp.scan_dims == 2
    assert fp.modality == ModalityKind.MRI
    text = fp.model_dump_json()
    for secret in ("patient", "9000", "secret-dataset-name", "st-elsewhere", "nii", "images"):
        assert secret not in text
    strings: list[str] = []

    def walk(x: object) -> None:
        if isinstance(x, str):
            strings.append(x)
        elif isinstance(x, dict):
            assert all(k in FIELDS for k in x), x.keys()
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(json.loads(text))
    assert set(strings) <= {"ct", "mri", "other"}
    for spacing in SPACINGS:  # no single case's spacing leaves the site
        assert all(not np.isclose(spacing, row).any() for row in fp.spacing)
    for axis in range(2):
        sizes = [s[axis] for s in SHAPES]
        assert all(row[axis] not in sizes for row in fp.shape)
    # the median row is the mean of the five middle cases
    assert fp.level("spacing", 50.0)[0] == pytest.approx(np.mean(SPACINGS[1:6]))
    assert fp.level("shape", 50.0) == pytest.approx(np.mean(SHAPES[1:6], axis=0))


FIELDS = set(DatasetFingerprint.model_fields) | {"modality", "levels", "percentiles", "mean", "sd"}


def test_fingerprint_statistics_match_numpy(tmp_path: Path) -> None:
    manifest = load(write_site(tmp_path / "site", n=3))
    fp = compute_fingerprint(manifest)
    images, labels = [], []
    for case in manifest.iter_cases("training"):
        import nibabel as nib

        paths = manifest.resolve(case)
        images.append(np.asarray(nib.load(paths.image).dataobj, dtype=np.float64).ravel())
        labels.append(np.asarray(nib.load(paths.label).dataobj).ravel())
    image, label = np.concatenate(images), np.concatenate(labels)
    fg = image[label > 0]
    ch = fp.channels[0]
    assert ch.mean == pytest.approx(fg.mean(), rel=1e-6)
    assert ch.sd == pytest.approx(fg.std(), rel=1e-6)
    # fewer than 10,000 foreground voxels per case: the pool is every foreground voxel
    assert ch.percentiles[0] == pytest.approx(np.percentile(fg, 0.5), rel=1e-5)
    assert ch.percentiles[-1] == pytest.approx(np.percentile(fg, 99.5), rel=1e-5)
    counts = np.bincount(label, minlength=3)
    assert fp.class_frequencies == pytest.approx(counts / counts.sum())
    assert fp.labelled_voxels == label.size and fp.foreground_voxels == fg.size
    # three cases: every spacing and shape figure is the mean of all three
    assert fp.spacing[0] == pytest.approx((np.mean(SPACINGS[:3]),) * 2)
    assert fp.spacing[0] == fp.spacing[2]


def test_volumes_for_a_2d_task_keep_three_axes(tmp_path: Path) -> None:
    fp = compute_fingerprint(load(write_site(tmp_path / "site", n=2, dims3=True)))
    assert fp.scan_dims == 3 and fp.spatial_dims == 2
    assert fp.level("spacing", 50.0)[2] == pytest.approx(5.0)
    assert fp.level("shape", 50.0)[2] == pytest.approx(3.0)


def test_schema_refuses_extra_fields_and_per_case_lists(tmp_path: Path) -> None:
    data = compute_fingerprint(load(write_site(tmp_path / "s", n=2))).model_dump(mode="json")
    with pytest.raises(ValidationError):
        DatasetFingerprint.model_validate({**data, "cases": ["patient9000.nii.gz"]})
    with pytest.raises(ValidationError):
        DatasetFingerprint.model_validate({**data, "spacing": [[0.7, 0.7]] * 7})  # per-case rows
    with pytest.raises(ValidationError):
        DatasetFingerprint.model_validate({**data, "num_cases": 1, "window_cases": 1})
    channel = {**data["channels"][0], "file": "x"}
    with pytest.raises(ValidationError):
        DatasetFingerprint.model_validate({**data, "channels": [channel]})


def test_too_few_cases_give_no_fingerprint(tmp_path: Path) -> None:
    with pytest.raises(FingerprintError, match="at least 2"):
        compute_fingerprint(load(write_site(tmp_path / "s", n=1)))


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("CT", ModalityKind.CT),
        ("non-contrast CT", ModalityKind.CT),
        ("MRI", ModalityKind.MRI),
        ("cine-MRI", ModalityKind.MRI),
        ("T2", ModalityKind.MRI),
        ("FLAIR", ModalityKind.MRI),
        ("ultrasound", ModalityKind.OTHER),
        ("rgb", ModalityKind.OTHER),
    ],
)
def test_modality_kind(name: str, kind: ModalityKind) -> None:
    assert modality_kind(name) == kind


def test_ct_manifest_gives_a_ct_fingerprint(tmp_path: Path) -> None:
    fp = compute_fingerprint(load(write_site(tmp_path / "s", n=2, modality="CT")))
    assert fp.modality == ModalityKind.CT and fp.channels[0].modality == ModalityKind.CT


def test_scans_that_disagree_with_the_manifest_are_refused_clearly(tmp_path: Path) -> None:
    path = write_site(tmp_path / "s", n=2)
    manifest = load(path)
    label_path = manifest.resolve(next(manifest.iter_cases("training"))).label
    assert label_path is not None
    write_mask_nifti(np.full(SHAPES[0], 3, dtype=np.uint8), np.eye(4), label_path)
    with pytest.raises(FingerprintError, match=r"label values 0\.\.2"):
        compute_fingerprint(manifest)
    write_mask_nifti(np.zeros((5, 5), dtype=np.uint8), np.eye(4), label_path)
    with pytest.raises(FingerprintError, match="label of the image's shape"):
        compute_fingerprint(manifest)
