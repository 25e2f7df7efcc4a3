"""DICOM series folders and single DICOM files read with pydicom, in ITK's geometry and slice order.

fedseg read DICOM with SimpleITK (ITK + GDCM, 264 MB in the site image) until pydicom took over;
the results are the same, and ``tests/data_specs/test_dicom_read.py`` checks them against
SimpleITK (installed by the ``itk`` and ``test`` extras) on series and on pydicom's sample files.
The rules are those of ITK's ``ImageSeriesReader`` with GDCM's ``SerieHelper``:

- a folder holds the readable DICOM files with pixel data directly in it (not in sub-folders),
  grouped by Series Instance UID; exactly one series is expected;
- slice order: ascending position along the normal of the first file's Image Orientation
  (Patient); when a position is missing or repeated, ascending Instance Number; when those are
  missing or all equal, the file names;
- origin: the first file's Image Position (Patient); directions: its row and column cosines and
  their cross product; in-plane spacing: Pixel Spacing (row spacing is the y spacing);
  slice spacing: the distance from the first to the last position divided by ``n - 1``;
- a single file (or a one-file series) has the slice spacing of its Spacing Between Slices, else
  1; a multi-frame file stacks its frames along the third axis, placed by its functional
  groups where it has them;
- values: the Modality LUT (Rescale Slope and Intercept) applied; colour stays RGB; a palette
  colour image becomes RGB through its palette.

Known differences from GDCM, both where GDCM is wrong: 16- and 32-bit RGB with RLE compression
(GDCM swaps the byte segments) and 1-bit images (GDCM gives 255 for 1); neither is a scan.

Compressed transfer syntaxes decode through pydicom's plugins: Pillow (JPEG baseline, JPEG 2000),
pylibjpeg (JPEG lossless and extended, JPEG-LS, JPEG 2000) and pydicom's own RLE decoder.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from data_specs.errors import ImageReadError


def series_files(source: str | Path) -> list[Path]:
    """The files of the one DICOM series in a folder, in slice order (or ``[source]`` for a file).

    Args:
        source: a series folder or one ``.dcm`` file. Example: ``"scans/ct_series"``.

    Raises:
        ImageReadError: the folder holds no series or several.
    """
    source = Path(source)
    if not source.is_dir():
        return [source]
    return [f for f, _ in _ordered_series(source)]


def read_dicom(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A DICOM series folder or file as ``(C, x, y, z)`` and its 4x4 affine in LPS.

    Args:
        path: a series folder or one ``.dcm`` file. Example: ``Path("scans/ct_series")``.

    Raises:
        ImageReadError: no series, several series, or slices of different sizes.
    """
    import pydicom

    if path.is_dir():
        ordered = _ordered_series(path)
        datasets = [pydicom.dcmread(str(f)) for f, _ in ordered]
    else:
        datasets = [pydicom.dcmread(str(path))]
    frames = [_values(ds) for ds in datasets]  # each (frames, rows, cols[, 3])
    shapes = {f.shape[1:] for f in frames}
    if len(shapes) != 1:
        raise ImageReadError(
            f"{path}: expected slices of one size, found {sorted(str(s) for s in shapes)}"
        )
    stack = np.concatenate(frames, axis=0)  # (z, y, x[, c])
    if stack.ndim == 3:
        stack = stack[..., None]
    array = np.transpose(stack, (3, 2, 1, 0))  # (c, x, y, z)
    return array, _affine(datasets, stack.shape[0])


def _ordered_series(folder: Path) -> list[tuple[Path, Any]]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue  # not DICOM (GDCM skips such files too)
        if "SeriesInstanceUID" not in ds and "Rows" not in ds:
            continue  # DICOMDIR and other files without an image
        groups[str(ds.get("SeriesInstanceUID", ""))].append((f, ds))
    if len(groups) != 1:
        raise ImageReadError(
            f"{folder}: expected a folder holding one DICOM series, found {len(groups)}"
        )
    files = next(iter(groups.values()))
    return _by_position(files) or _by_instance_number(files) or files


def _floats(ds: Any, keyword: str, n: int) -> np.ndarray | None:
    value = ds.get(keyword)
    if value is None or len(value) != n:
        return None
    return np.asarray([float(v) for v in value], dtype=np.float64)


def _by_position(files: list[tuple[Path, Any]]) -> list[tuple[Path, Any]] | None:
    orientation = _floats(files[0][1], "ImageOrientationPatient", 6)
    positions = [_floats(ds, "ImagePositionPatient", 3) for _, ds in files]
    if orientation is None or any(p is None for p in positions):
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    dist = [float(normal @ p) for p in positions if p is not None]
    if len(files) > 1 and (min(dist) == max(dist) or len(set(dist)) != len(dist)):
        return None
    order = sorted(range(len(files)), key=lambda i: dist[i])
    return [files[i] for i in order]


def _by_instance_number(files: list[tuple[Path, Any]]) -> list[tuple[Path, Any]] | None:
    numbers = [ds.get("InstanceNumber") for _, ds in files]
    if any(n is None or n == "" for n in numbers):
        return None
    values = [int(n) for n in numbers]
    if len(files) > 1 and min(values) == max(values):
        return None
    order = sorted(range(len(files)), key=lambda i: values[i])
    return [files[i] for i in order]


def _values(ds: Any) -> np.ndarray:
    from pydicom.pixels import apply_color_lut, apply_rescale

    pixels = ds.pixel_array
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)  # GDCM: an 8-bit image keeps 8 bits of a 16-bit LUT
        descriptor = ds.get("RedPaletteColorLookupTableDescriptor") or [0, 0, 8]
        if int(ds.get("BitsAllocated", 8)) == 8 and int(descriptor[2]) == 16:
            pixels = (pixels >> 8).astype(np.uint8)
        return np.asarray(pixels if int(ds.get("NumberOfFrames", 1) or 1) > 1 else pixels[None])
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames == 1:
        pixels = pixels[None]
    if samples == 1 and ("RescaleSlope" in ds or "RescaleIntercept" in ds):
        pixels = apply_rescale(pixels, ds)
    elif samples == 1 and "SharedFunctionalGroupsSequence" in ds:
        pixels = apply_rescale(pixels, ds)  # the Pixel Value Transformation of enhanced images
    return np.asarray(pixels)


def _geometry(ds: Any, frame: int = 0) -> tuple[Any, Any, Any]:
    """(position, orientation, pixel spacing) of one frame: top level, then functional groups."""
    position = _floats(ds, "ImagePositionPatient", 3)
    orientation = _floats(ds, "ImageOrientationPatient", 6)
    spacing = _floats(ds, "PixelSpacing", 2)
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) > frame:
        groups.append(per_frame[frame])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared is not None and len(shared):
        groups.append(shared[0])
    for group in groups:
        for seq, keyword, n in (
            ("PlanePositionSequence", "ImagePositionPatient", 3),
            ("PlaneOrientationSequence", "ImageOrientationPatient", 6),
            ("PixelMeasuresSequence", "PixelSpacing", 2),
        ):
            items = group.get(seq)
            if not items:
                continue
            found = _floats(items[0], keyword, n)
            if found is None:
                continue
            if keyword == "ImagePositionPatient" and position is None:
                position = found
            elif keyword == "ImageOrientationPatient" and orientation is None:
                orientation = found
            elif keyword == "PixelSpacing" and spacing is None:
                spacing = found
    return position, orientation, spacing


def _slice_spacing(ds: Any) -> float:
    offsets = ds.get("GridFrameOffsetVector")  # RT Dose: frame offsets along the normal
    if offsets is not None and len(offsets) > 1:
        return abs(float(offsets[1]) - float(offsets[0])) or 1.0
    value = ds.get("SpacingBetweenSlices")
    if value is None:
        shared = ds.get("SharedFunctionalGroupsSequence")
        measures = shared[0].get("PixelMeasuresSequence") if shared else None
        value = measures[0].get("SpacingBetweenSlices") if measures else None
    spacing = float(value) if value not in (None, "") else 0.0
    return spacing if spacing > 0 else 1.0


def _affine(datasets: list[Any], depth: int) -> np.ndarray:
    first = datasets[0]
    position, orientation, pixel_spacing = _geometry(first)
    origin = position if position is not None else np.zeros(3)
    if orientation is None:
        orientation = np.asarray([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    row, col = orientation[:3], orientation[3:]
    direction = np.stack([row, col, np.cross(row, col)], axis=1)
    dy, dx = (float(v) for v in pixel_spacing) if pixel_spacing is not None else (1.0, 1.0)
    dz = _slice_spacing(first)
    if depth > 1:
        if len(datasets) > 1:
            last, _, _ = _geometry(datasets[-1])
        else:
            last, _, _ = _geometry(first, depth - 1)
        if position is not None and last is not None:
            span = float(np.linalg.norm(last - position))
            if span > 0:
                dz = span / (depth - 1)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag([dx, dy, dz])
    affine[:3, 3] = origin
    return affine
