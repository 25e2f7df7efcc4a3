"""Writing a predicted mask the way its user needs it: NIfTI, PNG/TIFF or DICOM SEG, by suffix.

``check_mask_destination`` runs before any inference, so a wrong suffix or a missing folder is
reported at once instead of after minutes of computing.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from data_specs.constants import ImageFormat
from data_specs.errors import ImageWriteError
from data_specs.files import atomic_write_bytes
from data_specs.imaging.imageio import NIFTI_SUFFIXES, ImageGeometry, write_mask_like

PICTURE_MASK_SUFFIXES = (".png", ".tif", ".tiff")
DICOM_SEG_SUFFIXES = (".dcm",)


class MaskFormat(StrEnum):
    """How a mask file is written, from its suffix."""

    NIFTI = "nifti"
    PICTURE = "picture"
    DICOM_SEG = "dicom-seg"


def mask_format(path: str | Path) -> MaskFormat:
    """The mask format a destination's suffix asks for.

    Args:
        path: the mask to write. Example: ``"out/scan_mask.png"``.

    Raises:
        ImageWriteError: the suffix is none of ``.nii``, ``.nii.gz``, ``.png``, ``.tif``,
            ``.tiff`` or ``.dcm``.
    """
    name = Path(path).name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return MaskFormat.NIFTI
    if name.endswith(PICTURE_MASK_SUFFIXES):
        return MaskFormat.PICTURE
    if name.endswith(DICOM_SEG_SUFFIXES):
        return MaskFormat.DICOM_SEG
    raise ImageWriteError(
        f"{path}: expected a mask ending in .nii.gz or .nii (NIfTI), .png, .tif or .tiff "
        f"(2D pictures) or .dcm (DICOM SEG, for DICOM scans), found "
        f"{''.join(Path(path).suffixes) or 'no suffix'!r}"
    )


def check_mask_destination(
    path: str | Path, *, scan_format: ImageFormat, spatial_ndim: int | None = None
) -> MaskFormat:
    """Refuse a destination that cannot be written, before any work is done.

    Args:
        path: the mask to write. Example: ``"scan_mask.nii.gz"``.
        scan_format: the scan's format (DICOM SEG needs a DICOM scan).
        spatial_ndim: the scan's spatial dims when known (a picture mask must be 2D).
            Default None (unknown: checked again at writing).

    Returns:
        The mask format.

    Raises:
        ImageWriteError: unsupported suffix, a format that does not suit the scan, a missing
            or read-only folder, or a folder in the file's place.
    """
    path = Path(path)
    fmt = mask_format(path)
    if fmt == MaskFormat.DICOM_SEG and scan_format != ImageFormat.DICOM:
        raise ImageWriteError(
            f"{path}: a DICOM SEG (.dcm) references the DICOM series it segments; the scan is "
            f"{scan_format}, so write .nii.gz, .png or .tif instead"
        )
    if fmt == MaskFormat.PICTURE and spatial_ndim not in (None, 2):
        raise ImageWriteError(
            f"{path}: expected a 2D scan for a picture mask, found a {spatial_ndim}D scan; "
            "write .nii.gz (or .dcm for a DICOM series)"
        )
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ImageWriteError(f"{path}: expected an existing folder {folder}, found none")
    if not os.access(folder, os.W_OK):
        raise ImageWriteError(f"{path}: expected a writable folder {folder}, found it read-only")
    if path.is_dir():
        raise ImageWriteError(f"{path}: expected a file name, found a folder")
    return fmt


def write_mask_picture(
    mask: Any, path: str | Path, *, values: Mapping[int, int] | None = None
) -> None:
    """Write a 2D mask as a PNG or TIFF the size of the picture it belongs to (atomic).

    The mask's ``(x, y)`` grid becomes the picture's columns and rows (the transpose of
    ``data_specs.imaging.imageio``'s layout), so ``PIL.Image.open(mask)`` overlays the scan pixel for
    pixel. Values are class indices, or the stored values a manifest's ``label_map`` names.

    Args:
        mask: integer ``(x, y)`` or ``(1, x, y)``. Example: ``segmentation.mask``.
        path: ``.png``, ``.tif`` or ``.tiff`` destination.
        values: class index -> value written. Example: ``{1: 255}``. Default None (indices).

    Raises:
        ImageWriteError: not 2D, negative or fractional values, wrong suffix, missing folder.
    """
    from PIL import Image

    path = Path(path)
    if mask_format(path) != MaskFormat.PICTURE:
        raise ImageWriteError(f"{path}: expected a .png, .tif or .tiff destination")
    arr = np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ImageWriteError(f"{path}: expected a 2D mask for a picture, found shape {arr.shape}")
    if arr.size and (arr.min() < 0 or not np.array_equal(np.rint(arr), arr)):
        raise ImageWriteError(f"{path}: expected non-negative integer mask values")
    arr = arr.astype(np.int64)
    if values:
        out = arr.copy()
        for k, v in values.items():
            out[arr == k] = v
        arr = out
    dtype = np.uint8 if arr.size == 0 or arr.max() <= 255 else np.uint16
    picture = Image.fromarray(np.ascontiguousarray(arr.T.astype(dtype)))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG" if path.suffix.lower() == ".png" else "TIFF")
    if not path.parent.is_dir():
        raise ImageWriteError(f"{path}: expected an existing folder {path.parent}, found none")
    atomic_write_bytes(path, buffer.getvalue())


def write_mask(
    mask: Any,
    geometry: ImageGeometry,
    path: str | Path,
    *,
    source: str | Path | Sequence[str | Path] | None = None,
    class_names: Mapping[int, str] | None = None,
    values: Mapping[int, int] | None = None,
) -> MaskFormat:
    """Write a mask in the scan's geometry, in the format the suffix asks for (atomic).

    Args:
        mask: integer mask of ``geometry.spatial_shape``.
        geometry: the scan's spatial shape and RAS affine.
        path: ``.nii.gz``/``.nii``, ``.png``/``.tif``/``.tiff`` (2D) or ``.dcm`` (DICOM SEG).
        source: the DICOM series folder or file the SEG references (``.dcm`` only).
        class_names: foreground class names by value, for the SEG's segment descriptions.
        values: class index -> stored value, for picture masks. Default None.

    Returns:
        The format written.

    Raises:
        ImageWriteError: the mask does not suit the format or the geometry.
    """
    fmt = mask_format(path)
    if fmt == MaskFormat.NIFTI:
        write_mask_like(mask, geometry, path)
    elif fmt == MaskFormat.PICTURE:
        write_mask_picture(mask, path, values=values)
    else:
        from data_specs.imaging.dicom_seg import write_dicom_seg

        if source is None or not isinstance(source, str | Path):
            raise ImageWriteError(f"{path}: a DICOM SEG needs the one DICOM series it segments")
        write_dicom_seg(mask, source, path, class_names=class_names or {})
    return fmt
