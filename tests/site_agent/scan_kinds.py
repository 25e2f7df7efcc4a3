"""Small scans of every kind a site holds: pictures, NIfTI, one DICOM file, a DICOM series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from PIL import Image

STUDY = "1.2.826.0.1.3680043.2.1125.1.77"


class Threshold(torch.nn.Module):
    """Logits that make class 1 exactly the voxels above the mean (after z-scoring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1]], dim=1)


def block_picture(rows: int = 24, cols: int = 40, seed: int = 0) -> np.ndarray:
    """A grey picture (rows, cols) with a bright block off every axis of symmetry."""
    rng = np.random.default_rng(seed)
    pic = rng.integers(10, 40, (rows, cols)).astype(np.uint8)
    pic[3:9, 5:17] = 220  # top left: a transpose or a flip would move it
    return pic


def save_picture(pic: np.ndarray, path: Path) -> Path:
    Image.fromarray(pic).save(path, **({"quality": 95} if path.suffix == ".jpg" else {}))
    return path


def block_volume(shape_xyz: tuple[int, int, int] = (20, 24, 10), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = rng.normal(0.0, 1.0, shape_xyz).astype(np.float32)
    vol[2:8, 14:21, 1:4] += 8.0
    return vol


def _tags(series: str, z: int, origin_index: tuple[float, ...], orientation: str) -> dict[str, str]:
    return {
        "0008|0060": "MR",
        "0008|0016": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
        "0010|0020": "ANON",
        "0010|0010": "Anon^Patient",
        "0020|000d": STUDY,
        "0020|000e": series,
        "0020|0052": series + ".9",  # frame of reference
        "0020|0037": orientation,
        "0020|0013": str(z + 1),
        "0008|0018": f"{series}.{z + 1}",
        "0020|0032": "\\".join(f"{v:.6f}" for v in origin_index),
    }


def write_dicom_series(
    volume_xyz: np.ndarray,
    folder: Path,
    *,
    spacing: tuple[float, float, float] = (0.8, 0.9, 2.0),
    origin: tuple[float, float, float] = (5.0, -3.0, 7.0),
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    series: str = "1.2.826.0.1.3680043.2.1125.1.1234",
) -> Path:
    """A DICOM series written slice by slice with SimpleITK (the usual recipe)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.round(volume_xyz * 100).astype(np.int16).transpose(2, 1, 0))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    orientation = "\\".join(str(v) for v in (*direction[0:9:3], *direction[1:9:3]))
    for z in range(image.GetDepth()):
        piece = image[:, :, z]
        position = image.TransformIndexToPhysicalPoint((0, 0, z))
        for tag, value in _tags(series, z, position, orientation).items():
            piece.SetMetaData(tag, value)
        piece.SetMetaData("0018|0050", str(spacing[2]))
        writer.SetFileName(str(folder / f"slice_{z:03d}.dcm"))
        writer.Execute(piece)
    return folder


def write_dicom_file(picture_rows_cols: np.ndarray, path: Path) -> Path:
    """One 2D DICOM image (a single-file scan)."""
    image = sitk.GetImageFromArray(picture_rows_cols.astype(np.int16))
    image.SetSpacing((0.7, 0.7))
    series = "1.2.826.0.1.3680043.2.1125.1.5678"
    for tag, value in _tags(series, 0, (0.0, 0.0, 0.0), "1\\0\\0\\0\\1\\0").items():
        image.SetMetaData(tag, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(path))
    writer.Execute(image)
    return path


def overlay_in_itk(scan: Path, mask: Path) -> np.ndarray:
    """The mask resampled onto the scan's grid by SimpleITK, as a viewer overlays it."""
    if scan.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(scan)))
        reference = reader.Execute()
    else:
        reference = sitk.ReadImage(str(scan))
    if reference.GetNumberOfComponentsPerPixel() > 1:
        reference = sitk.VectorIndexSelectionCast(reference, 0)
    moving = sitk.ReadImage(str(mask))
    if moving.GetDimension() != reference.GetDimension():
        moving = moving[:, :, 0] if moving.GetDimension() == 3 else moving
    resampled = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(resampled)  # (z,) y, x
