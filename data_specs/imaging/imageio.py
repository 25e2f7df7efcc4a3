"""Reading scans (NIfTI, DICOM series, PNG/JPEG/TIFF/GIF) and writing masks in a scan's geometry.

Axis conventions match MONAI's readers so that a mask predicted by the training pipeline lines up:
arrays are channel first, ``(C, x, y[, z])``; affines are 4x4 voxel-to-world in RAS (DICOM's LPS
is flipped, as nibabel would store the same geometry); a 2D picture's first spatial axis is its
column (``array[c, x, y] = picture[y, x]``, MONAI ``PILReader`` ``reverse_indexing=True``).

DICOM is read with pydicom in ITK's geometry (``data_specs.imaging.dicom_read``).

A picture's affine is ``PICTURE_AFFINE``: ITK (SimpleITK, 3D Slicer, ITK-SNAP) reads a PNG with
origin 0, spacing 1 and identity direction in LPS, which is ``diag(-1, -1, 1, 1)`` in RAS; a
NIfTI mask written with it overlays the picture in those viewers, and its array is the
picture's ``(x, y)`` grid as NIfTI stores every image.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data_specs.constants import ImageFormat
from data_specs.errors import ImageReadError, ImageWriteError
from data_specs.files import atomic_write_bytes

if TYPE_CHECKING:
    from PIL import Image

    from data_specs.imaging.label_mapping import LabelMapping

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
PICTURE_AFFINE = _LPS_TO_RAS.copy()
PICTURE_AFFINE.flags.writeable = False


@dataclass(frozen=True)
class ImageGeometry:
    """Where a scan's voxels are: spatial shape and 4x4 RAS affine."""

    spatial_shape: tuple[int, ...]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size along each spatial axis (column norms of the affine)."""
        cols = self.affine[:3, : len(self.spatial_shape)]
        return tuple(float(s) for s in np.sqrt((cols**2).sum(axis=0)))


@dataclass(frozen=True)
class ImageData:
    """A scan in memory.

    Args:
        array: ``(C, *spatial)``; float32 for images, int32 for labels.
        affine: 4x4 voxel-to-world matrix, RAS.
        format: how the scan was stored. Example: ``ImageFormat.NIFTI``.
    """

    array: np.ndarray
    affine: np.ndarray
    format: ImageFormat

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape[1:])

    @property
    def num_channels(self) -> int:
        return int(self.array.shape[0])

    @property
    def geometry(self) -> ImageGeometry:
        return ImageGeometry(self.spatial_shape, self.affine)

    @property
    def spacing(self) -> tuple[float, ...]:
        return self.geometry.spacing


def detect_format(path: str | Path) -> ImageFormat:
    """Which reader a path needs, from its suffix (a folder is a DICOM series). Reads nothing.

    Args:
        path: a scan. Example: ``"imagesTr/case_000.nii.gz"``.

    Raises:
        ImageReadError: the suffix is not a supported format.
    """
    path = Path(path)
    name = path.name.lower()
    if path.is_dir() or name.endswith(".dcm"):
        return ImageFormat.DICOM
    if name.endswith(NIFTI_SUFFIXES):
        return ImageFormat.NIFTI
    if name.endswith(PIL_SUFFIXES):
        return ImageFormat.PIL
    raise ImageReadError(
        f"{path}: expected a NIfTI (.nii, .nii.gz), DICOM (folder or .dcm) or picture "
        f"({', '.join(PIL_SUFFIXES)}) file, found suffix {''.join(path.suffixes) or '(none)'!r}"
    )


def read_image(
    path: str | Path | Sequence[str | Path],
    *,
    label: bool = False,
    mapping: LabelMapping | None = None,
    affine_tol: float = 1e-3,
) -> ImageData:
    """Read a scan or a label map, channel first.

    Args:
        path: NIfTI file, DICOM series folder (or one .dcm file), or picture; or a list of
            such files, one per channel, which must share their geometry.
            Example: ``"imagesTr/case_000.nii.gz"``.
        label: read a label map: integer values, one channel. Default False.
        mapping: for a label map, the manifest's stored value -> class rule. Default None.
        affine_tol: largest affine difference between channel files. Default ``1e-3``.

    Returns:
        The array, its RAS affine and format.

    Raises:
        ImageReadError: missing, truncated or corrupt file, unsupported format, channel files
            of different geometry, or a label map with non-integer values or several channels;
            the message names the file.
    """
    if not isinstance(path, str | Path):
        return _read_channels([Path(p) for p in path], affine_tol)
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: expected an image file, found nothing at this path")
    fmt = detect_format(path)
    reader = {ImageFormat.NIFTI: _read_nifti, ImageFormat.DICOM: _read_dicom}.get(fmt, _read_pil)
    try:
        array, affine = reader(path, label)
    except ImageReadError:
        raise
    except Exception as exc:  # any decoder failure means an unreadable file
        raise ImageReadError(
            f"{path}: expected a readable {fmt} image, found a truncated or corrupt file "
            f"({type(exc).__name__})"
        ) from exc
    if label:
        array = _as_label(array, path)
        array = mapping.apply(array) if mapping is not None else array
    else:
        array = np.ascontiguousarray(array, dtype=np.float32)
    return ImageData(array=array, affine=np.asarray(affine, dtype=np.float64), format=fmt)


def _read_channels(paths: list[Path], affine_tol: float) -> ImageData:
    if not paths:
        raise ImageReadError("expected at least one image file, found an empty list")
    parts = [read_image(p) for p in paths]
    first = parts[0]
    for p, part in zip(paths[1:], parts[1:], strict=True):
        if part.spatial_shape != first.spatial_shape:
            raise ImageReadError(
                f"{p}: expected the spatial shape {first.spatial_shape} of {paths[0].name} "
                f"(channels share one grid), found {part.spatial_shape}"
            )
        diff = float(np.abs(part.affine - first.affine).max())
        if diff > affine_tol:
            raise ImageReadError(
                f"{p}: expected the affine of {paths[0].name} (channels share one grid), "
                f"found one differing by up to {diff:.4g}"
            )
    array = np.concatenate([part.array for part in parts], axis=0)
    return ImageData(array=array, affine=first.affine, format=first.format)


def _as_label(array: np.ndarray, path: Path) -> np.ndarray:
    if array.shape[0] != 1:
        raise ImageReadError(f"{path}: expected a label map with 1 channel, found {array.shape[0]}")
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.rint(array)
        if not np.allclose(rounded, array, atol=1e-3):
            raise ImageReadError(f"{path}: expected integer label values, found fractions")
        array = rounded
    return np.ascontiguousarray(array, dtype=np.int32)


def _read_nifti(path: Path, label: bool) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img: Any = nib.load(str(path))
    data = np.asanyarray(img.dataobj) if label else img.get_fdata(dtype=np.float32)
    if data.ndim == 4:  # Decathlon multi-channel volumes are channel last
        data = np.moveaxis(data, -1, 0)
    elif data.ndim in (2, 3):
        data = data[None]
    else:
        raise ImageReadError(f"{path}: expected a 2D, 3D or 4D NIfTI, found {data.ndim}D")
    return data, np.asarray(img.affine)


def _read_dicom(path: Path, label: bool) -> tuple[np.ndarray, np.ndarray]:
    from data_specs.imaging.dicom_read import read_dicom

    arr, affine = read_dicom(path)
    return arr, _LPS_TO_RAS @ affine


def pil_mode_for(img: Image.Image, *, label: bool = False) -> Image.Image:
    """Bring a picture to a mode with 1 or 3 channels (shared with the MONAI ``PILReader``).

    Args:
        img: an opened picture. Example: ``PIL.Image.open("a.png")``.
        label: keep palette indices and grey levels as label values. Default False.
    """
    if label:
        return img.convert("L") if img.mode in ("1", "LA") else img
    if img.mode in ("1", "LA") or (img.mode in ("P", "PA") and _grey_palette(img)):
        return img.convert("L")
    if img.mode in ("P", "PA", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB")
    return img


def _grey_palette(img: Image.Image) -> bool:
    # GIF stores grey pictures as a palette; they are one channel, not three.
    pal = img.getpalette() or []
    return all(pal[i] == pal[i + 1] == pal[i + 2] for i in range(0, len(pal) - 2, 3))


def pil_image_mode(img: Image.Image) -> Image.Image:
    """``pil_mode_for`` for images, a picklable converter for MONAI's ``PILReader``."""
    return pil_mode_for(img, label=False)


def pil_label_mode(img: Image.Image) -> Image.Image:
    """``pil_mode_for`` for label maps, a picklable converter for MONAI's ``PILReader``."""
    return pil_mode_for(img, label=True)


def _read_pil(path: Path, label: bool) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    with Image.open(path) as opened:
        opened.load()  # decode now: a truncated file fails here, not later
        pic = np.asarray(pil_mode_for(opened, label=label))
    if pic.ndim == 3 and label:
        raise ImageReadError(
            f"{path}: expected a single-channel label picture, found {pic.shape[2]}"
        )
    pic = pic[..., None] if pic.ndim == 2 else pic
    return np.transpose(pic, (2, 1, 0)), PICTURE_AFFINE.copy()


def write_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path) -> None:
    """Write an array as NIfTI, atomically and byte-for-byte reproducibly (gzip without a time).

    Args:
        array: spatial array ``(x, y[, z])`` in its final dtype. Example: ``np.zeros((32, 32))``.
        affine: 4x4 voxel-to-world RAS matrix. Example: ``np.diag([1.2, 1.2, 1.0, 1.0])``.
        path: ``.nii`` or ``.nii.gz`` destination in an existing folder.

    Raises:
        ImageWriteError: wrong suffix, bad affine, or a missing folder.
    """
    import nibabel as nib

    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise ImageWriteError(f"{path}: expected a .nii or .nii.gz destination")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ImageWriteError(f"{path}: expected a finite 4x4 affine, found shape {affine.shape}")
    img = nib.Nifti1Image(np.asarray(array), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    data = img.to_bytes()
    if path.name.lower().endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    if not path.parent.is_dir():
        raise ImageWriteError(f"{path}: expected an existing folder {path.parent}, found none")
    atomic_write_bytes(path, data)


def write_mask_nifti(mask: np.ndarray, affine: np.ndarray, path: str | Path) -> None:
    """Write a label map as NIfTI (uint8, or int16 beyond 255), atomically.

    Args:
        mask: integer-valued ``(x, y[, z])`` or ``(1, x, y[, z])``; torch tensors are accepted.
            Example: ``pred.argmax(0)``.
        affine: 4x4 RAS affine of the voxel grid.
        path: ``.nii`` or ``.nii.gz`` destination in an existing folder.

    Raises:
        ImageWriteError: fractional or negative values, wrong suffix, missing folder.
    """
    mask = _to_numpy(mask)
    if mask.ndim >= 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.size and (mask.min() < 0 or not np.array_equal(np.rint(mask), mask)):
        raise ImageWriteError(f"{path}: expected non-negative integer mask values")
    dtype = np.uint8 if mask.size == 0 or mask.max() <= 255 else np.int16
    write_nifti(mask.astype(dtype), affine, path)


def write_mask_like(mask: Any, reference: ImageData | ImageGeometry, path: str | Path) -> None:
    """Write a mask with exactly a reference scan's spatial shape and affine.

    Args:
        mask: integer-valued ``(*spatial)`` or ``(1, *spatial)`` in the reference's voxel grid.
        reference: the scan the mask belongs to. Example: ``read_image("scan.nii.gz")``.
        path: ``.nii`` or ``.nii.gz`` destination. Example: ``"out/scan_mask.nii.gz"``.

    Raises:
        ImageWriteError: the mask's shape differs from the reference's spatial shape.
    """
    geometry = reference.geometry if isinstance(reference, ImageData) else reference
    mask = _to_numpy(mask)
    shape = tuple(int(s) for s in mask.shape)
    if shape[0] == 1 and len(shape) == len(geometry.spatial_shape) + 1:
        shape = shape[1:]
    if shape != geometry.spatial_shape:
        raise ImageWriteError(
            f"{path}: expected a mask of the reference's spatial shape {geometry.spatial_shape}, "
            f"found {shape}"
        )
    write_mask_nifti(mask.reshape(shape), geometry.affine, path)


def _to_numpy(array: Any) -> np.ndarray:
    # torch tensors (possibly on a GPU) without importing torch here
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)
