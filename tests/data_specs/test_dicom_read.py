"""pydicom's DICOM reading gives what SimpleITK (ITK + GDCM) gives: slice order, geometry, values.

SimpleITK read fedseg's DICOM before ``data_specs.imaging.dicom_read``; it stays the reference
here (the ``itk`` extra). Series are written slice by slice with SimpleITK, then shuffled,
renamed, tilted, spaced unevenly; single files come from pydicom's own sample set (compressed
transfer syntaxes included).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from data_specs.errors import ImageReadError
from data_specs.imaging.dicom_read import read_dicom, series_files
from data_specs.imaging.dicom_seg import series_files as seg_series_files
from tests.site_agent.scan_kinds import block_volume, write_dicom_series

sitk.ProcessObject_SetGlobalWarningDisplay(False)


def itk_read(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """SimpleITK's array ``(C, x, y, z)``, LPS affine and file order, as fedseg used it."""
    files = [str(path)]
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        files = list(reader.GetGDCMSeriesFileNames(str(path)))
        reader.SetFileNames(files)
        img = reader.Execute()
    else:
        img = sitk.ReadImage(str(path))
    dim = img.GetDimension()
    arr = sitk.GetArrayFromImage(img)
    if img.GetNumberOfComponentsPerPixel() > 1:
        arr = np.transpose(arr, (dim, *range(dim - 1, -1, -1)))
    else:
        arr = np.transpose(arr[None], (0, *range(dim, 0, -1)))
    affine = np.eye(4)
    direction = np.asarray(img.GetDirection()).reshape(dim, dim)
    affine[:dim, :dim] = direction @ np.diag(img.GetSpacing())
    affine[:dim, 3] = img.GetOrigin()
    return arr, affine, [Path(f).name for f in files]


def assert_same_as_itk(path: Path, *, atol: float = 0.0) -> None:
    ref, ref_affine, ref_order = itk_read(path)
    arr, affine = read_dicom(path)
    assert arr.shape == ref.shape
    assert np.abs(arr.astype(np.float64) - ref.astype(np.float64)).max() <= atol
    np.testing.assert_allclose(affine, ref_affine, atol=1e-4)
    if path.is_dir():
        assert [f.name for f in series_files(path)] == ref_order


def oblique_direction() -> tuple[float, ...]:
    a, b = np.deg2rad(20), np.deg2rad(-35)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple(float(v) for v in (rz @ rx).ravel())


@pytest.mark.parametrize("direction", ["axial", "oblique", "reversed"])
def test_a_series_reads_as_simpleitk_reads_it(tmp_path: Path, direction: str) -> None:
    kw: dict = {}
    if direction == "oblique":
        kw["direction"] = oblique_direction()
    elif direction == "reversed":  # slices stacked towards the feet: files sorted by position
        kw["direction"] = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0)
    series = write_dicom_series(block_volume((16, 18, 7)), tmp_path / "s", **kw)
    assert_same_as_itk(series)


def test_file_names_do_not_decide_the_order_positions_do(tmp_path: Path) -> None:
    series = write_dicom_series(block_volume((12, 10, 6), seed=3), tmp_path / "s")
    for i, f in enumerate(sorted(series.iterdir())):  # names now run against the positions
        f.rename(series / f"img_{(5 - i) * 7 % 13:02d}.dcm")
    assert_same_as_itk(series)
    first = series_files(series)[0]
    assert float(pydicom.dcmread(first).ImagePositionPatient[2]) == pytest.approx(7.0)


def test_uneven_spacing_uses_the_first_and_last_position_like_itk(tmp_path: Path) -> None:
    series = write_dicom_series(block_volume((12, 10, 5), seed=4), tmp_path / "s")
    moved = sorted(series.iterdir())[-1]
    ds = pydicom.dcmread(moved)
    ds.ImagePositionPatient = [5.0, -3.0, 7.0 + 4 * 2.0 + 1.0]  # the last slice 1 mm further
    ds.save_as(moved)
    assert_same_as_itk(series)
    _, affine = read_dicom(series)
    assert affine[2, 2] == pytest.approx(9.0 / 4)  # not the first step (2.0)


def test_repeated_positions_fall_back_to_instance_numbers(tmp_path: Path) -> None:
    series = write_dicom_series(block_volume((12, 10, 4), seed=5), tmp_path / "s")
    for i, f in enumerate(sorted(series.iterdir())):
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [5.0, -3.0, 7.0]  # all at one place (a time series)
        ds.InstanceNumber = 10 - i
        ds.save_as(f)
    assert_same_as_itk(series)
    assert [pydicom.dcmread(f).InstanceNumber for f in series_files(series)] == [7, 8, 9, 10]


def test_rescale_slope_and_intercept_are_applied(tmp_path: Path) -> None:
    series = write_dicom_series(block_volume((12, 10, 3), seed=6), tmp_path / "s")
    for f in series.iterdir():
        ds = pydicom.dcmread(f)
        ds.RescaleSlope, ds.RescaleIntercept = 2, -1024
        ds.save_as(f)
    assert_same_as_itk(series)
    arr, _ = read_dicom(series)
    assert arr.min() < -900  # the intercept is in the values


def test_one_file_series_and_other_files_in_the_folder(tmp_path: Path) -> None:
    series = write_dicom_series(block_volume((12, 10, 1), seed=7), tmp_path / "one")
    (series / "README.txt").write_text("not DICOM")
    assert_same_as_itk(series)
    assert [f.name for f in series_files(series)] == ["slice_000.dcm"]


def test_two_series_and_no_series_are_refused(tmp_path: Path) -> None:
    write_dicom_series(block_volume((8, 8, 2)), tmp_path / "two")
    write_dicom_series(block_volume((8, 8, 2)), tmp_path / "b", series="1.2.826.0.1.99")
    for f in (tmp_path / "b").iterdir():
        shutil.move(f, tmp_path / "two" / f"b_{f.name}")
    with pytest.raises(ImageReadError, match="one DICOM series, found 2"):
        read_dicom(tmp_path / "two")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="one DICOM series, found 0"):
        series_files(tmp_path / "empty")


def test_dicom_seg_uses_the_same_order() -> None:
    assert seg_series_files is series_files


# pydicom's sample files that GDCM reads: (name, largest difference allowed). Lossy JPEG decoders
# round differently (libjpeg here, GDCM's IJG there): a few grey levels of 255.
SAMPLES = [
    ("CT_small.dcm", 0),
    ("MR_small.dcm", 0),
    ("MR_small_bigendian.dcm", 0),
    ("MR_small_implicit.dcm", 0),
    ("MR_small_RLE.dcm", 0),
    ("MR_small_jpeg_ls_lossless.dcm", 0),
    ("MR_small_jp2klossless.dcm", 0),
    ("JPEG2000.dcm", 0),
    ("693_J2KI.dcm", 0),
    ("JPEGLSNearLossless_16.dcm", 0),
    ("SC_rgb_jpeg_gdcm.dcm", 0),  # JPEG lossless, colour
    ("SC_rgb_rle.dcm", 0),
    ("SC_rgb_rle_2frame.dcm", 0),  # multi-frame
    ("SC_ybr_full_422_uncompressed.dcm", 0),
    ("examples_palette.dcm", 0),  # palette colour -> RGB
    ("rtdose.dcm", 0),  # multi-frame with frame offsets
    ("JPGExtended.dcm", 1),  # 12-bit lossy
    pytest.param("SC_rgb_jpeg.dcm", 1, marks=pytest.mark.slow),  # SimpleITK reads it in ~9 s
    ("examples_ybr_color.dcm", 3),  # 30 frames, lossy YBR
]


@pytest.mark.parametrize(("name", "atol"), SAMPLES)
def test_single_files_read_as_simpleitk_reads_them(name: str, atol: float) -> None:
    assert_same_as_itk(Path(get_testdata_file(name)), atol=atol)
