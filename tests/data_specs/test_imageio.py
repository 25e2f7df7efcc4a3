"""Reading NIfTI, DICOM series and pictures; writing masks in a reference scan's geometry."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from data_specs.constants import ImageFormat
from data_specs.errors import ImageReadError, ImageWriteError
from data_specs.imaging.imageio import (
    ImageGeometry,
    detect_format,
    read_image,
    write_mask_like,
    write_mask_nifti,
    write_nifti,
)

OBLIQUE = np.array(
    [[-0.9, 0.1, 0.0, 30.0], [0.05, 1.1, 0.0, -4.0], [0.0, 0.0, 2.5, 7.0], [0.0, 0.0, 0.0, 1.0]]
)


def test_nifti_3d_reads_channel_first_with_its_affine(tmp_path: Path) -> None:
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    write_nifti(data, OBLIQUE, tmp_path / "v.nii.gz")
    img = read_image(tmp_path / "v.nii.gz")
    assert img.array.shape == (1, 4, 5, 6) and img.array.dtype == np.float32
    np.testing.assert_array_equal(img.array[0], data)
    np.testing.assert_allclose(img.affine, OBLIQUE)
    assert img.format == ImageFormat.NIFTI
    assert img.spacing == pytest.approx((np.hypot(0.9, 0.05), np.hypot(0.1, 1.1), 2.5))


def test_nifti_4d_is_channel_last_on_disk_and_first_in_memory(tmp_path: Path) -> None:
    data = np.random.default_rng(0).random((4, 5, 6, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "mc.nii")
    img = read_image(tmp_path / "mc.nii")
    assert img.num_channels == 2 and img.spatial_shape == (4, 5, 6)
    np.testing.assert_array_equal(img.array[1], data[..., 1])


def test_label_maps_come_back_as_integers_and_fractions_are_refused(tmp_path: Path) -> None:
    write_nifti(np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32), np.eye(4), tmp_path / "l.nii")
    lab = read_image(tmp_path / "l.nii", label=True)
    assert lab.array.dtype == np.int32 and lab.array.tolist() == [[[0, 1], [2, 3]]]
    write_nifti(np.array([[0.0, 0.5]], dtype=np.float32), np.eye(4), tmp_path / "f.nii")
    with pytest.raises(ImageReadError, match=r"f\.nii: expected integer label values"):
        read_image(tmp_path / "f.nii", label=True)


def test_truncated_nifti_names_the_file(tmp_path: Path) -> None:
    write_nifti(np.zeros((20, 20, 20), np.float32), np.eye(4), tmp_path / "ok.nii.gz")
    blob = (tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.nii\.gz: expected a readable nifti image"):
        read_image(tmp_path / "cut.nii.gz")


def test_corrupt_and_missing_and_unknown_files_are_image_read_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 30))
    with pytest.raises(ImageReadError, match="junk"):
        read_image(tmp_path / "junk.nii.gz")
    with pytest.raises(
        ImageReadError, match=r"absent\.nii\.gz: expected an image file, found nothing"
    ):
        read_image(tmp_path / "absent.nii.gz")
    (tmp_path / "x.mha").write_bytes(b"x")
    with pytest.raises(ImageReadError, match=r"found suffix '\.mha'"):
        read_image(tmp_path / "x.mha")


def _write_dicom_series(folder: Path, volume_zyx: np.ndarray, spacing, origin, direction) -> None:
    """A DICOM series written slice by slice with SimpleITK (the usual recipe)."""
    img = sitk.GetImageFromArray(volume_zyx)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(np.asarray(direction).ravel().tolist())
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.424242"
    d = np.asarray(direction)
    orientation = "\\".join(f"{v:.6f}" for v in (*d[:, 0], *d[:, 1]))
    for z in range(img.GetDepth()):
        sl = img[:, :, z]
        position = "\\".join(f"{v:.6f}" for v in img.TransformIndexToPhysicalPoint((0, 0, z)))
        tags = {
            "0008|0060": "MR",
            "0020|000d": series_uid + ".1",
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.2.{z}",
            "0020|0013": str(z + 1),
            "0020|0032": position,
            "0020|0037": orientation,
            "0028|0030": f"{spacing[1]}\\{spacing[0]}",
            "0018|0050": str(spacing[2]),
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice_{z:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_affine_equals_nibabel_for_the_same_geometry(tmp_path: Path) -> None:
    th = 0.4
    direction = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1.0]])
    spacing, origin = (0.7, 0.9, 2.5), (12.0, -30.0, 5.0)
    volume = np.random.default_rng(0).integers(0, 1000, (4, 6, 5)).astype(np.int16)  # z, y, x
    _write_dicom_series(tmp_path / "series", volume, spacing, origin, direction)
    # The same geometry through SimpleITK's NIfTI writer (LPS -> RAS) and read by nibabel.
    ref = sitk.GetImageFromArray(volume)
    ref.SetSpacing(spacing)
    ref.SetOrigin(origin)
    ref.SetDirection(direction.ravel().tolist())
    sitk.WriteImage(ref, str(tmp_path / "ref.nii.gz"))
    expected = nib.load(tmp_path / "ref.nii.gz")

    img = read_image(tmp_path / "series")
    assert img.format == ImageFormat.DICOM
    assert img.array.shape == (1, 5, 6, 4)  # (C, x, y, z)
    np.testing.assert_allclose(img.affine, expected.affine, atol=1e-4)
    np.testing.assert_array_equal(img.array[0], np.asarray(expected.dataobj))
    assert img.affine[0, 3] == pytest.approx(-origin[0]) and img.affine[1, 3] == pytest.approx(
        -origin[1]
    )
    assert img.spacing == pytest.approx(spacing)


def test_a_folder_without_dicom_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="one DICOM series, found 0"):
        read_image(tmp_path / "empty")


def test_rgb_picture_gives_three_channels_column_first(tmp_path: Path) -> None:
    pic = np.random.default_rng(1).integers(0, 255, (7, 9, 3)).astype(np.uint8)  # rows, cols
    Image.fromarray(pic).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.array.shape == (3, 9, 7) and img.format == ImageFormat.PIL
    assert img.array[0, 4, 2] == pic[2, 4, 0]  # array[c, x, y] = picture[y, x, c]
    # ITK reads a picture with identity direction in LPS: diag(-1, -1, 1, 1) in RAS
    np.testing.assert_array_equal(img.affine, np.diag([-1.0, -1.0, 1.0, 1.0]))


@pytest.mark.parametrize("suffix", [".png", ".tif", ".gif", ".jpg"])
def test_grey_pictures_give_one_channel(tmp_path: Path, suffix: str) -> None:
    pic = (np.arange(6 * 8).reshape(6, 8) * 5).astype(np.uint8)
    Image.fromarray(pic, mode="L").save(tmp_path / f"g{suffix}")
    img = read_image(tmp_path / f"g{suffix}")
    assert img.array.shape == (1, 8, 6)


def test_palette_label_picture_keeps_indices(tmp_path: Path) -> None:
    idx = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    pic = Image.fromarray(idx, mode="P")
    pic.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pic.save(tmp_path / "lab.png")
    assert read_image(tmp_path / "lab.png", label=True).array[0].T.tolist() == idx.tolist()
    assert read_image(tmp_path / "lab.png").num_channels == 3  # as an image: colours


def test_truncated_png_names_the_file(tmp_path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(
        tmp_path / "full.png"
    )
    blob = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.png"):
        read_image(tmp_path / "cut.png")


def test_write_mask_like_uses_exactly_the_reference_geometry(tmp_path: Path) -> None:
    write_nifti(np.zeros((6, 7, 3), np.float32), OBLIQUE, tmp_path / "scan.nii.gz")
    ref = read_image(tmp_path / "scan.nii.gz")
    mask = np.zeros((1, 6, 7, 3), dtype=np.int64)
    mask[0, 2:4, 1:5, 1] = 3
    write_mask_like(mask, ref, tmp_path / "mask.nii.gz")
    out = nib.load(tmp_path / "mask.nii.gz")
    assert out.shape == (6, 7, 3) and out.get_data_dtype() == np.uint8
    np.testing.assert_allclose(out.affine, OBLIQUE)
    np.testing.assert_array_equal(np.asarray(out.dataobj), mask[0])


def test_write_mask_like_refuses_a_wrong_shape_and_writes_nothing(tmp_path: Path) -> None:
    geometry = ImageGeometry(spatial_shape=(6, 7, 3), affine=np.eye(4))
    with pytest.raises(
        ImageWriteError,
        match=r"expected a mask of the reference's spatial shape \(6, 7, 3\), found \(6, 7, 4\)",
    ):
        write_mask_like(np.zeros((6, 7, 4)), geometry, tmp_path / "m.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_write_mask_refuses_fractions_missing_folders_and_wrong_suffix(tmp_path: Path) -> None:
    with pytest.raises(ImageWriteError, match="integer"):
        write_mask_nifti(np.array([[0.5]]), np.eye(4), tmp_path / "m.nii.gz")
    with pytest.raises(ImageWriteError, match="existing folder"):
        write_mask_nifti(np.zeros((2, 2)), np.eye(4), tmp_path / "no" / "m.nii.gz")
    with pytest.raises(ImageWriteError, match=r"\.nii or \.nii\.gz"):
        write_mask_nifti(np.zeros((2, 2)), np.eye(4), tmp_path / "m.png")
    assert list(tmp_path.iterdir()) == []


def test_writes_are_byte_reproducible(tmp_path: Path) -> None:
    data = np.random.default_rng(0).random((5, 5, 5)).astype(np.float32)
    write_nifti(data, OBLIQUE, tmp_path / "a.nii.gz")
    write_nifti(data, OBLIQUE, tmp_path / "b.nii.gz")
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()


def test_detect_format_reads_nothing(tmp_path: Path) -> None:
    assert detect_format(tmp_path / "x.NII.GZ") == ImageFormat.NIFTI
    assert detect_format(tmp_path / "x.dcm") == ImageFormat.DICOM
    assert detect_format(tmp_path) == ImageFormat.DICOM
    assert detect_format(tmp_path / "x.jpeg") == ImageFormat.PIL
