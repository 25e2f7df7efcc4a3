"""A mask written for a scan overlays it in SimpleITK, nibabel and Pillow, for every input kind."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from data_specs.imaging.imageio import read_image
from data_specs.task_spec import TaskSpec
from site_agent.clinic.inference import segment_scan, write_segmentation
from site_agent.errors import WorkDirError
from tests.site_agent.scan_kinds import (
    Threshold,
    block_picture,
    block_volume,
    overlay_in_itk,
    save_picture,
    write_dicom_file,
    write_dicom_series,
)

SPEC_2D = TaskSpec(spatial_dims=2, channels=(4, 8), strides=(2,), patch_size=(16, 16))
SPEC_3D = TaskSpec(spatial_dims=3, channels=(4, 8), strides=(2,), patch_size=(16, 16, 16))


@pytest.mark.parametrize(
    ("suffix", "mask_suffix"),
    # ITK reads no GIF, so a GIF scan cannot take part in the ITK overlay check.
    [(".png", ".png"), (".tif", ".tif"), (".jpg", ".png"), (".bmp", ".tif")],
)
def test_picture_masks_overlay_the_picture_in_itk_nibabel_and_pillow(
    tmp_path: Path, suffix: str, mask_suffix: str
) -> None:
    pic = block_picture()
    scan = save_picture(pic, tmp_path / f"scan{suffix}")
    as_read = np.asarray(Image.open(scan).convert("L"), dtype=np.float32)  # (rows, cols)
    truth = as_read > as_read.mean()
    assert truth[5, 8] and not truth[20, 35]  # the block, top left
    seg = segment_scan(Threshold(), SPEC_2D, scan)

    write_segmentation(seg, tmp_path / f"mask{mask_suffix}")
    with Image.open(tmp_path / f"mask{mask_suffix}") as mask_picture:
        assert mask_picture.size == Image.open(scan).size
        np.testing.assert_array_equal(np.asarray(mask_picture), truth.astype(np.uint8))

    write_segmentation(seg, tmp_path / "mask.nii.gz")
    # Any ITK viewer (3D Slicer, ITK-SNAP) puts the NIfTI mask exactly over the picture.
    np.testing.assert_array_equal(overlay_in_itk(scan, tmp_path / "mask.nii.gz"), truth)
    # nibabel: the NIfTI is the picture's (x, y) grid, with the picture's affine.
    nifti = nib.load(tmp_path / "mask.nii.gz")
    np.testing.assert_array_equal(np.asarray(nifti.dataobj), truth.T)
    np.testing.assert_array_equal(nifti.affine, read_image(scan).affine)


def test_nifti_volume_mask_overlays_in_itk_and_nibabel(tmp_path: Path) -> None:
    vol = block_volume()
    affine = np.diag([-0.9, 1.1, 2.5, 1.0])
    affine[:3, 3] = [12.0, -4.0, 3.0]
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "scan.nii.gz")
    seg = segment_scan(Threshold(), SPEC_3D, tmp_path / "scan.nii.gz")
    write_segmentation(seg, tmp_path / "mask.nii.gz")
    truth = vol > vol.mean()
    np.testing.assert_allclose(nib.load(tmp_path / "mask.nii.gz").affine, affine)
    itk = overlay_in_itk(tmp_path / "scan.nii.gz", tmp_path / "mask.nii.gz")
    np.testing.assert_array_equal(itk, truth.transpose(2, 1, 0))


def test_dicom_series_and_single_file_masks_overlay_in_itk(tmp_path: Path) -> None:
    vol = block_volume((16, 18, 6))
    series = write_dicom_series(vol, tmp_path / "series")
    seg = segment_scan(Threshold(), SPEC_3D, series)
    write_segmentation(seg, tmp_path / "series_mask.nii.gz")
    stored = np.round(vol * 100)
    truth = stored > stored.mean()
    np.testing.assert_array_equal(
        overlay_in_itk(series, tmp_path / "series_mask.nii.gz"), truth.transpose(2, 1, 0)
    )

    pic = block_picture().astype(np.int16) * 3
    single = write_dicom_file(pic, tmp_path / "one.dcm")
    seg = segment_scan(Threshold(), SPEC_2D, single)
    write_segmentation(seg, tmp_path / "one_mask.nii.gz")
    overlay = overlay_in_itk(single, tmp_path / "one_mask.nii.gz").reshape(pic.shape)
    np.testing.assert_array_equal(overlay, pic > pic.mean())


def test_dicom_seg_references_the_series_and_holds_the_mask(tmp_path: Path) -> None:
    import highdicom as hd
    import pydicom

    vol = block_volume((16, 18, 6))
    series = write_dicom_series(vol, tmp_path / "series")
    seg = segment_scan(Threshold(), SPEC_3D, series)
    write_segmentation(seg, tmp_path / "mask.dcm", source=series, class_names={1: "lesion"})
    ds = pydicom.dcmread(tmp_path / "mask.dcm")
    assert ds.Modality == "SEG"
    source = [pydicom.dcmread(p) for p in sorted(series.iterdir())]
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID
    assert ds.SegmentSequence[0].SegmentLabel == "lesion"
    back = hd.seg.segread(tmp_path / "mask.dcm")
    by_position = sorted(source, key=lambda d: float(d.ImagePositionPatient[2]))
    uids = [d.SOPInstanceUID for d in by_position]
    pixels = back.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, skip_overlap_checks=True
    )
    # frame k is slice k of the mask, rows = y, columns = x
    np.testing.assert_array_equal(pixels, seg.mask.transpose(2, 1, 0))
    assert seg.mask.any()


def test_unwritable_mask_destinations_are_refused(tmp_path: Path) -> None:
    from data_specs.constants import ImageFormat
    from data_specs.errors import ImageWriteError
    from data_specs.imaging.mask_io import MaskFormat, check_mask_destination

    ok = check_mask_destination(tmp_path / "m.png", scan_format=ImageFormat.PIL, spatial_ndim=2)
    assert ok == MaskFormat.PICTURE
    for path, fmt, ndim, message in [
        (tmp_path / "m.jpg", ImageFormat.PIL, 2, "expected a mask ending in"),
        (tmp_path / "m.png", ImageFormat.NIFTI, 3, "expected a 2D scan"),
        (tmp_path / "m.dcm", ImageFormat.NIFTI, 3, "references the DICOM series"),
        (tmp_path / "nope" / "m.nii.gz", ImageFormat.NIFTI, 3, "existing folder"),
    ]:
        with pytest.raises(ImageWriteError, match=message):
            check_mask_destination(path, scan_format=fmt, spatial_ndim=ndim)
    seg = segment_scan(Threshold(), SPEC_3D, write_dicom_series(block_volume(), tmp_path / "s"))
    with pytest.raises(WorkDirError, match="expected a 2D mask"):
        write_segmentation(seg, tmp_path / "m.png")
    assert not (tmp_path / "m.png").exists()
