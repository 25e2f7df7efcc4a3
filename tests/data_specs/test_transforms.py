"""MONAI pipelines: datasets of patches, slices of volumes, augmentation, and the way back."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from data_specs.errors import ImageReadError, ImageWriteError, ManifestError
from data_specs.imaging.datasets import build_dataset
from data_specs.imaging.imageio import read_image, write_mask_nifti, write_nifti
from data_specs.imaging.transforms import load_transforms, prepare_scan
from data_specs.manifests.manifest import CaseEntry, DatasetManifest, load_manifest, save_manifest
from data_specs.sources.synth import synthesize
from data_specs.task_spec import TaskSpec
from tests.data_specs.tiny_data import LABELS, disc_label, tiny_site

SPEC2 = TaskSpec(out_channels=4, patch_size=(32, 32))
OBLIQUE_FLIPPED = np.array(
    [[-1.2, 0.1, 0.0, 30.0], [0.05, 1.1, 0.0, -4.0], [0.0, 0.0, 2.0, 7.0], [0.0, 0.0, 0.0, 1.0]]
)


@pytest.fixture(scope="module")
def synth_site(tmp_path_factory: pytest.TempPathFactory) -> DatasetManifest:
    out = tmp_path_factory.mktemp("synth")
    (path,) = synthesize(out, sites=1, cases=20, dims=2, seed=0)
    return load_manifest(path)


def test_2d_items_are_patch_sized_tensors_and_load_fast(synth_site: DatasetManifest) -> None:
    build_dataset(synth_site, SPEC2, "validation")  # MONAI imports once
    start = time.perf_counter()
    ds = build_dataset(synth_site, SPEC2, "training", train=True, seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"20-case 2D dataset took {elapsed:.2f} s"
    assert len(ds) == 12
    item = ds[0]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert item["label"].shape == (1, 32, 32) and item["label"].dtype == torch.int64
    assert type(item["image"]) is torch.Tensor  # no MONAI metadata rides along
    assert set(item) == {"image", "label", "case", "slice"}
    assert set(torch.unique(item["label"]).tolist()) <= {0, 1, 2, 3}
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 1, 32, 32)


def test_zscore_and_minmax_normalise_each_scan(synth_site: DatasetManifest) -> None:
    z = build_dataset(synth_site, SPEC2, "validation")[0]["image"]
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(z.std()) == pytest.approx(1.0, abs=1e-2)
    spec = SPEC2.model_copy(update={"intensity": "minmax"})
    m = build_dataset(synth_site, spec, "validation")[0]["image"]
    assert float(m.min()) == pytest.approx(0.0) and float(m.max()) == pytest.approx(1.0)


def test_augmentation_is_seeded_and_keeps_labels_integral(synth_site: DatasetManifest) -> None:
    def draw(seed: int) -> list[torch.Tensor]:
        ds = build_dataset(synth_site, SPEC2, "training", train=True, seed=seed)
        return [ds[i % len(ds)]["image"] for i in range(16)]

    a, b, c = draw(1), draw(1), draw(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    ds = build_dataset(synth_site, SPEC2, "training", train=True, seed=3)
    labels = torch.cat([ds[i]["label"].flatten() for i in range(len(ds))])
    assert set(labels.unique().tolist()) <= {0, 1, 2, 3}
    plain = build_dataset(synth_site, SPEC2, "training", train=False)
    assert all(torch.equal(plain[0]["image"], plain[0]["image"]) for _ in range(8))
    assert any(not torch.equal(ds[0]["image"], ds[0]["image"]) for _ in range(8))


def test_resize_fit_brings_any_size_to_the_patch(tmp_path: Path) -> None:
    m = load_manifest(tiny_site(tmp_path, shape=(40, 24)))
    spec = TaskSpec(out_channels=3, patch_size=(16, 16))
    item = build_dataset(m, spec, "training", fit="resize")[0]
    assert item["image"].shape == (1, 16, 16)
    assert set(item["label"].unique().tolist()) == {0, 1, 2}
    whole = build_dataset(m, spec, "training", fit="none")[0]
    assert whole["image"].shape == (1, 40, 24)


def _volume_site(folder: Path, depth: int = 6, n: int = 3) -> DatasetManifest:
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        label = np.zeros((20, 20, depth), np.uint8)
        label[..., 1:-1] = disc_label((20, 20))[..., None]  # first and last slice empty
        image = (label * 40 + np.random.default_rng(i).normal(0, 3, label.shape)).astype(np.float32)
        write_nifti(image, np.diag([1.4, 1.4, 8.0, 1.0]), folder / f"v{i}.nii.gz")
        write_mask_nifti(label, np.diag([1.4, 1.4, 8.0, 1.0]), folder / f"v{i}_gt.nii.gz")
        entries.append(CaseEntry(image=f"v{i}.nii.gz", label=f"v{i}_gt.nii.gz"))
    m = DatasetManifest(
        name="vol",
        site_id="v",
        spatial_dims=2,
        modality={"0": "MRI"},
        labels=dict(LABELS),
        training=entries,
    )
    save_manifest(m, folder / "dataset.json")
    return m


def test_a_2d_task_slices_volumes_and_can_keep_foreground_slices_only(tmp_path: Path) -> None:
    m = _volume_site(tmp_path, depth=6, n=3)
    spec = TaskSpec(out_channels=3, patch_size=(16, 16))
    ds = build_dataset(m, spec, "training")
    assert len(ds) == 18
    assert [ds[i]["slice"] for i in range(6)] == [0, 1, 2, 3, 4, 5]
    assert ds[6]["case"] == 1 and ds[0]["image"].shape == (1, 16, 16)
    fg = build_dataset(m, spec, "training", train=True, foreground_only=True)
    assert len(fg) == 12
    assert all(fg[i]["label"].any() for i in range(len(fg)))


def test_spec_and_manifest_must_agree(synth_site: DatasetManifest) -> None:
    with pytest.raises(ManifestError, match="classes: task spec expects 3, manifest has 4"):
        build_dataset(synth_site, TaskSpec(out_channels=3), "training")
    with pytest.raises(ManifestError, match="spatial_dims"):
        build_dataset(
            synth_site,
            TaskSpec(spatial_dims=3, out_channels=4, patch_size=(16, 16, 16)),
            "training",
        )


def test_a_corrupt_scan_names_its_file(tmp_path: Path) -> None:
    m = load_manifest(tiny_site(tmp_path))
    path = tmp_path / "images" / "c1.nii.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ImageReadError, match=r"c1\.nii\.gz"):
        build_dataset(m, TaskSpec(out_channels=3, patch_size=(16, 16)), "training")


def test_unlabelled_test_scans_give_items_without_label(tmp_path: Path) -> None:
    manifest = tiny_site(tmp_path)
    m = load_manifest(manifest)
    m.test = [CaseEntry(image=m.test[0].image)]  # type: ignore[index]
    item = build_dataset(m, TaskSpec(out_channels=3, patch_size=(16, 16)), "test")[0]
    assert "label" not in item and item["image"].shape == (1, 16, 16)


def test_3d_task_reorients_to_ras(tmp_path: Path) -> None:
    label = np.zeros((12, 10, 8), np.uint8)
    label[1:4, 2:5, 3:6] = 1
    label[7:9, 6:9, 1:3] = 2
    write_nifti(label.astype(np.float32), OBLIQUE_FLIPPED, tmp_path / "img.nii.gz")
    write_mask_nifti(label, OBLIQUE_FLIPPED, tmp_path / "lab.nii.gz")
    m = DatasetManifest(
        name="x",
        site_id="x",
        spatial_dims=3,
        modality={"0": "CT"},
        labels=dict(LABELS),
        training=[CaseEntry(image="img.nii.gz", label="lab.nii.gz")],
    )
    save_manifest(m, tmp_path / "dataset.json")
    spec = TaskSpec(spatial_dims=3, out_channels=3, patch_size=(8, 8, 8))
    item = build_dataset(m, spec, "training", fit="none")[0]
    canonical = np.asarray(nib.as_closest_canonical(nib.load(tmp_path / "lab.nii.gz")).dataobj)
    np.testing.assert_array_equal(item["label"][0].numpy(), canonical)
    assert not np.array_equal(canonical, label)  # the flip really happened


def test_prepared_scan_maps_predictions_back_to_the_scans_grid(tmp_path: Path) -> None:
    grid = np.indices((24, 20, 10)).astype(float)
    dist = np.sqrt(
        (
            (grid - np.array([12, 10, 5])[:, None, None, None]) ** 2 / [[[[36]]], [[[25]]], [[[9]]]]
        ).sum(0)
    )
    label = (dist < 1).astype(np.uint8) + (dist < 0.5)
    write_nifti((label * 50.0).astype(np.float32), OBLIQUE_FLIPPED, tmp_path / "scan.nii.gz")
    write_mask_nifti(label, OBLIQUE_FLIPPED, tmp_path / "truth.nii.gz")
    spec = TaskSpec(spatial_dims=3, out_channels=3, patch_size=(8, 8, 8))
    scan = prepare_scan(tmp_path / "scan.nii.gz", spec, target_spacing=(0.8, 0.8, 0.8))
    assert not scan.sliced and scan.image.shape[1:] != label.shape  # resampled
    # What a perfect network would predict: the label through the same chain.
    chain = load_transforms(
        spec,
        label_format=read_image(tmp_path / "truth.nii.gz").format,
        target_spacing=(0.8, 0.8, 0.8),
    )
    predicted = chain(
        {"image": str(tmp_path / "scan.nii.gz"), "label": str(tmp_path / "truth.nii.gz")}
    )["label"]
    assert tuple(predicted.shape[1:]) == tuple(scan.image.shape[1:])
    scan.write_mask(predicted.as_tensor().round().long(), tmp_path / "pred.nii.gz")
    written = nib.load(tmp_path / "pred.nii.gz")
    assert written.shape == label.shape
    np.testing.assert_allclose(written.affine, OBLIQUE_FLIPPED)
    assert (np.asarray(written.dataobj) == label).mean() > 0.99
    with pytest.raises(ImageWriteError, match="expected a label map of shape"):
        scan.to_scan_geometry(torch.zeros(3, 3, 3))


def test_prepared_volume_for_a_2d_task_is_sliced_and_untouched_in_geometry(tmp_path: Path) -> None:
    _volume_site(tmp_path, depth=5, n=1)
    scan = prepare_scan(tmp_path / "v0.nii.gz", TaskSpec(out_channels=3, patch_size=(16, 16)))
    assert scan.sliced and scan.image.shape == (1, 20, 20, 5)
    truth = read_image(tmp_path / "v0_gt.nii.gz", label=True)
    np.testing.assert_array_equal(
        scan.to_scan_geometry(torch.as_tensor(truth.array)), truth.array[0]
    )
    np.testing.assert_allclose(scan.geometry.affine, truth.affine)


def test_pictures_load_the_same_way_through_monai_and_imageio(tmp_path: Path) -> None:
    pic = np.random.default_rng(0).integers(0, 255, (12, 18, 3)).astype(np.uint8)
    Image.fromarray(pic).save(tmp_path / "p.png")
    spec = TaskSpec(in_channels=3, out_channels=2, patch_size=(16, 16), intensity="minmax")
    scan = prepare_scan(tmp_path / "p.png", spec)
    ref = read_image(tmp_path / "p.png")
    assert scan.geometry.spatial_shape == ref.spatial_shape == (18, 12)
    np.testing.assert_array_equal(scan.geometry.affine, ref.affine)
    expected = (ref.array - ref.array.min(axis=(1, 2), keepdims=True)) / np.ptp(
        ref.array, axis=(1, 2), keepdims=True
    )
    np.testing.assert_allclose(scan.image.numpy(), expected, atol=1e-6)
    assert scan.to_scan_geometry(torch.ones(18, 12, dtype=torch.long)).shape == (18, 12)


def test_random_fit_draws_patches_over_the_whole_field_of_view(tmp_path: Path) -> None:
    """fit="random": every read is a patch-sized crop, at varying places, reproducible by seed."""
    import torch

    from data_specs.imaging.datasets import build_dataset
    from data_specs.manifests.manifest import load_manifest
    from data_specs.sources.synth import synthesize
    from data_specs.task_spec import TaskSpec

    (path,) = synthesize(tmp_path, sites=1, cases=5, dims=2, seed=0, size=48)
    manifest = load_manifest(path)
    spec = TaskSpec(out_channels=4, patch_size=(32, 32))

    def draws(seed: int) -> torch.Tensor:
        ds = build_dataset(
            manifest, spec, "training", train=True, seed=seed, fit="random", augment=False
        )
        return torch.stack([ds[0]["image"] for _ in range(6)])

    first = draws(1)
    assert first.shape[-2:] == (32, 32)
    assert torch.equal(first, draws(1))
    assert len({tuple(x.flatten()[:64].tolist()) for x in first}) > 1  # not always the centre
