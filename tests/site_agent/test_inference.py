"""Inference keeps the scan's geometry and puts every label on the voxel it was predicted for."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.spatial.transform import Rotation

from data_specs.task_spec import TaskSpec, build_unet
from site_agent.clinic.inference import segment_scan, write_segmentation
from site_agent.errors import ScanError

SPEC_3D = TaskSpec(spatial_dims=3, channels=(4, 8), strides=(2,), patch_size=(16, 16, 16))
SPEC_2D = TaskSpec(spatial_dims=2, channels=(4, 8), strides=(2,), patch_size=(16, 16))


class Threshold(torch.nn.Module):
    """Logits that make class 1 exactly the voxels above zero after z-scoring (above the mean)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1]], dim=1)


def oblique_affine(flip: bool = True) -> np.ndarray:
    affine = np.eye(4)
    rotation = Rotation.from_euler("xyz", [20, -35, 70], degrees=True).as_matrix()
    affine[:3, :3] = rotation @ np.diag([0.9, 1.3, 2.5])
    if flip:
        affine[:3, 0] *= -1
    affine[:3, 3] = [10.0, -5.0, 3.0]
    return affine


def volume(shape: tuple[int, ...] = (20, 24, 12), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = rng.normal(0.0, 1.0, shape).astype(np.float32)
    vol[3:9, 14:20, 2:5] += 6.0  # an asymmetric bright block: any flip or swap would move it
    return vol


def check_written(seg, path, shape, affine) -> nib.Nifti1Image:
    write_segmentation(seg, path)
    out = nib.load(str(path))
    assert out.shape == shape
    np.testing.assert_allclose(out.affine, affine, atol=1e-6)
    return out


def test_3d_oblique_flipped_scan_mask_lands_on_the_right_voxels(tmp_path) -> None:
    vol, affine = volume(), oblique_affine()
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "scan.nii.gz")
    seg = segment_scan(Threshold(), SPEC_3D, tmp_path / "scan.nii.gz")
    np.testing.assert_array_equal(seg.mask, vol > vol.mean())
    out = check_written(seg, tmp_path / "mask.nii.gz", vol.shape, affine)
    np.testing.assert_array_equal(np.asarray(out.dataobj), vol > vol.mean())


def test_reoriented_copy_gives_the_same_mask_in_world_coordinates(tmp_path) -> None:
    torch.manual_seed(1)
    net = build_unet(SPEC_3D.model_copy(update={"out_channels": 3}))
    spec = SPEC_3D.model_copy(update={"out_channels": 3})
    img = nib.Nifti1Image(volume(), oblique_affine())
    canonical = nib.as_closest_canonical(img)
    assert not np.allclose(canonical.affine, img.affine)  # really another voxel order
    nib.save(img, tmp_path / "a.nii.gz")
    nib.save(canonical, tmp_path / "b.nii.gz")
    mask_a = segment_scan(net, spec, tmp_path / "a.nii.gz").mask
    mask_b = segment_scan(net, spec, tmp_path / "b.nii.gz").mask
    assert len(np.unique(mask_a)) >= 2  # the random network predicts a non-trivial map
    to_ras = nib.orientations.io_orientation(img.affine)
    np.testing.assert_array_equal(nib.orientations.apply_orientation(mask_a, to_ras), mask_b)


def test_2d_task_segments_a_volume_slice_by_slice_and_a_2d_scan(tmp_path) -> None:
    vol, affine = volume(), oblique_affine()
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "vol.nii.gz")
    seg = segment_scan(Threshold(), SPEC_2D, tmp_path / "vol.nii.gz")
    np.testing.assert_array_equal(seg.mask, vol > vol.mean())
    check_written(seg, tmp_path / "vol_mask.nii.gz", vol.shape, affine)

    plane = vol[:, :, 3]
    affine_2d = np.diag([0.7, 1.1, 1.0, 1.0])
    affine_2d[:2, 3] = [-4.0, 9.0]
    nib.save(nib.Nifti1Image(plane, affine_2d), tmp_path / "plane.nii.gz")
    seg = segment_scan(Threshold(), SPEC_2D, tmp_path / "plane.nii.gz")
    np.testing.assert_array_equal(seg.mask, plane > plane.mean())
    check_written(seg, tmp_path / "plane_mask.nii.gz", plane.shape, affine_2d)


def test_resampling_is_inverted_back_to_the_scan_grid(tmp_path) -> None:
    vol = np.zeros((20, 24, 12), dtype=np.float32)
    vol[4:14, 6:18, 3:9] = 10.0
    affine = oblique_affine()
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "scan.nii.gz")
    seg = segment_scan(
        Threshold(), SPEC_3D, tmp_path / "scan.nii.gz", target_spacing=(1.5, 1.5, 1.5)
    )
    check_written(seg, tmp_path / "mask.nii.gz", vol.shape, affine)
    truth = vol > 0
    dice = 2 * (seg.mask.astype(bool) & truth).sum() / (seg.mask.astype(bool).sum() + truth.sum())
    assert dice > 0.9


def write_dicom_series(array_zyx: np.ndarray, folder, spacing, origin, direction) -> None:
    image = sitk.GetImageFromArray(array_zyx.astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series = "1.2.826.0.1.3680043.2.1125.1.1234"
    orientation = "\\".join(str(v) for v in (*direction[0:9:3], *direction[1:9:3]))
    for z in range(image.GetDepth()):
        piece = image[:, :, z]
        for tag, value in {
            "0008|0060": "MR",
            "0020|000d": series + ".0",
            "0020|000e": series,
            "0020|0037": orientation,
            "0020|0013": str(z + 1),
            "0008|0018": f"{series}.{z + 1}",
            "0020|0032": "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, z))),
            "0018|0050": str(spacing[2]),
        }.items():
            piece.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{z:03d}.dcm"))
        writer.Execute(piece)


def test_dicom_series_mask_has_the_series_geometry(tmp_path) -> None:
    vol = np.round(volume((16, 18, 8)) * 100)  # (x, y, z)
    folder = tmp_path / "series"
    folder.mkdir()
    rotation = Rotation.from_euler("z", 30, degrees=True).as_matrix()
    write_dicom_series(
        vol.transpose(2, 1, 0), folder, (0.8, 0.9, 2.0), (5.0, -3.0, 7.0), tuple(rotation.ravel())
    )
    seg = segment_scan(Threshold(), SPEC_3D, folder)
    np.testing.assert_array_equal(seg.mask, vol > vol.mean())
    lps = np.eye(4)
    lps[:3, :3] = rotation @ np.diag([0.8, 0.9, 2.0])
    lps[:3, 3] = [5.0, -3.0, 7.0]
    expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS as a RAS affine
    check_written(seg, tmp_path / "mask.nii.gz", vol.shape, expected)


def test_clear_errors_for_unreadable_scans_and_wrong_channels(tmp_path) -> None:
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b not a nifti at all")
    with pytest.raises(ScanError, match="cannot be used"):
        segment_scan(Threshold(), SPEC_3D, bad)
    with pytest.raises(ScanError, match="no scan at"):
        segment_scan(Threshold(), SPEC_3D, tmp_path / "missing.nii.gz")
    (tmp_path / "scan.txt").write_text("hello")
    with pytest.raises(ScanError, match="expected a NIfTI"):
        segment_scan(Threshold(), SPEC_3D, tmp_path / "scan.txt")
    nib.save(nib.Nifti1Image(volume(), np.eye(4)), tmp_path / "one.nii.gz")
    two_channels = SPEC_3D.model_copy(update={"in_channels": 2})
    with pytest.raises(ScanError, match="2 image channel"):
        segment_scan(Threshold(), two_channels, tmp_path / "one.nii.gz")
    nib.save(nib.Nifti1Image(volume()[:, :, 0], np.eye(4)), tmp_path / "flat.nii.gz")
    with pytest.raises(ScanError, match="suiting a 3D task, found 2D"):
        segment_scan(Threshold(), SPEC_3D, tmp_path / "flat.nii.gz")
