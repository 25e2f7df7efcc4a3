"""A picture of a predicted mask for the clinician: the scan, right way up, with filled outlined classes.

Orientation follows the scan's affine: a volume (or a 2D NIfTI / DICOM image) is brought to RAS
and shown in radiological convention (axial: the patient's right on the viewer's left, anterior
at the top; coronal: superior at the top; sagittal: anterior on the left, superior at the top).
A photograph is shown as any picture viewer shows it (its affine is ITK's identity, which the
same rule draws unchanged). Pixels keep their native size (small images are enlarged by a whole
factor, anisotropic voxels are stretched to their true proportions), RGB pictures stay in
colour, and each class is a semi-transparent fill with an opaque outline. Pillow draws it all;
no plotting library is imported.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from site_agent.errors import WorkDirError

_COLOURS = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (67, 99, 216),
    (245, 130, 49),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (188, 246, 12),
    (250, 190, 190),
    (0, 128, 128),
    (230, 190, 255),
)
_FILL_ALPHA = 0.35
_MIN_VIEW_SIDE = 4  # a view thinner than this many voxels is a strip, not a picture
_MIN_VIEW_ASPECT = 0.1  # ... and so is one whose short side is under a tenth of its long side
_MIN_DISPLAY = 256  # small images are enlarged by a whole factor up to about this many pixels
_GAP = 8


@dataclass(frozen=True)
class View:
    """One panel: an RGB uint8 picture with the overlay drawn, and its caption."""

    name: str
    rgb: np.ndarray


def colour_of(k: int) -> tuple[int, int, int]:
    """The display colour of class ``k`` (1-based)."""
    return _COLOURS[(k - 1) % len(_COLOURS)]


def mask_views(
    image: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray | None = None,
    *,
    picture: bool = False,
) -> list[View]:
    """The panels of a mask picture, each overlaid and at display size (no text).

    Args:
        image: the scan ``(C, *spatial)`` as ``read_image`` gives it.
        mask: integer mask of the scan's spatial shape.
        affine: the scan's 4x4 RAS affine. Default None (identity).
        picture: the scan is a photograph (intensities are shown as stored, 3 channels in
            colour). Default False (windowed to the 0.5-99.5 percentiles, first channel).
    """
    import nibabel as nib

    img = image if image.ndim == mask.ndim + 1 else image[None]
    grey = _display_intensities(img, picture)  # (3, *spatial) uint8
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if mask.ndim == 2:
        grey, mask = grey[..., None], mask[..., None]
    ornt = nib.orientations.io_orientation(affine)
    spacing_in = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    spacing = np.empty(3)
    spacing[ornt[:, 0].astype(int)] = spacing_in
    vol = np.stack([nib.orientations.apply_orientation(c, ornt) for c in grey])
    lab = nib.orientations.apply_orientation(mask, ornt).astype(np.int32)
    sx, sy, sz = spacing
    fg = lab > 0
    i, j, k = (_busiest(fg, axis) for axis in (0, 1, 2))
    nx, ny, nz = lab.shape
    candidates = [
        (
            f"axial {k + 1}/{nz}",
            vol[:, ::-1, ::-1, k].transpose(0, 2, 1),
            lab[::-1, ::-1, k].T,
            (sy, sx),
        ),
        (
            f"coronal {j + 1}/{ny}",
            vol[:, ::-1, j, ::-1].transpose(0, 2, 1),
            lab[::-1, j, ::-1].T,
            (sz, sx),
        ),
        (
            f"sagittal {i + 1}/{nx}",
            vol[:, i, ::-1, ::-1].transpose(0, 2, 1),
            lab[i, ::-1, ::-1].T,
            (sz, sy),
        ),
    ]
    if lab.shape[2] == 1:  # a 2D image: one view, no caption of a slice
        candidates = [("image", *candidates[0][1:])]
    views = [c for c in candidates if not _degenerate(c[2].shape, c[3])]
    if not views:  # every view is thin: keep the axial one
        views = candidates[:1]
    base = min(min(v[3]) for v in views)
    largest = max(max(v[2].shape) for v in views)
    factor = max(1, int(np.ceil(_MIN_DISPLAY / largest))) if largest < _MIN_DISPLAY else 1
    out = []
    for name, pic, region, (row_mm, col_mm) in views:
        rows = max(1, round(region.shape[0] * row_mm / base * factor))
        cols = max(1, round(region.shape[1] * col_mm / base * factor))
        rgb = _resize(pic.transpose(1, 2, 0), rows, cols)
        labels = _resize(region, rows, cols)
        out.append(View(name=name, rgb=_overlay(rgb, labels)))
    return out


def save_mask_picture(
    image: np.ndarray,
    mask: np.ndarray,
    path: str | Path,
    *,
    class_names: Mapping[int, str],
    affine: np.ndarray | None = None,
    picture: bool = False,
    title: str = "",
) -> None:
    """Write a PNG: the scan's views with the mask, each view captioned, and a legend.

    A volume gets axial, coronal and sagittal views, each through the slice holding the most
    predicted foreground (the middle when none), leaving out views only a few voxels thick.

    Args:
        image: the scan, ``(C, *spatial)``. Example: ``read_image(p).array``.
        mask: integer mask of the scan's spatial shape.
        path: the ``.png`` to write (atomically). Example: ``"case_mask.png"``.
        class_names: foreground class names by value, for the legend. Example: ``{1: "LV"}``.
        affine: the scan's 4x4 RAS affine (orientation and voxel size). Default None.
        picture: the scan is a photograph (see ``mask_views``). Default False.
        title: a line above the views. Default ``""``.

    Raises:
        WorkDirError: the picture cannot be written.
    """
    from PIL import Image, ImageDraw

    views = mask_views(image, mask, affine, picture=picture)
    font = _font()
    line = 18
    present = sorted(int(v) for v in np.unique(mask) if v > 0)
    width = sum(v.rgb.shape[1] for v in views) + _GAP * (len(views) + 1)
    height = max(v.rgb.shape[0] for v in views) + line * (2 if title else 1) + _GAP * 2 + line + 8
    canvas = Image.new("RGB", (max(width, 240), height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    top = _GAP
    if title:
        draw.text((_GAP, top), title, fill=(255, 255, 255), font=font)
        top += line
    x = _GAP
    for view in views:
        draw.text((x, top), view.name, fill=(220, 220, 220), font=font)
        canvas.paste(Image.fromarray(view.rgb), (x, top + line))
        x += view.rgb.shape[1] + _GAP
    y = height - line - 4
    x = _GAP
    if not present:
        draw.text((x, y), "no foreground class predicted", fill=(220, 220, 220), font=font)
    for k in present:
        name = class_names.get(k, f"class {k}")
        draw.rectangle((x, y + 3, x + 11, y + 14), fill=colour_of(k), outline=(255, 255, 255))
        draw.text((x + 16, y), name, fill=(255, 255, 255), font=font)
        x += 16 + int(draw.textlength(name, font=font)) + 14
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    from data_specs.files import atomic_write_bytes

    try:
        atomic_write_bytes(Path(path), buffer.getvalue())
    except OSError as exc:
        raise WorkDirError(f"cannot write the picture {path}: {exc.strerror}") from exc


def _display_intensities(img: np.ndarray, picture: bool) -> np.ndarray:
    """``(3, *spatial)`` uint8: RGB pictures in colour, anything else grey from channel 0."""
    if picture:
        chans = img[:3] if img.shape[0] >= 3 else np.repeat(img[:1], 3, axis=0)
        return np.clip(np.rint(chans), 0, 255).astype(np.uint8)
    first = img[0].astype(np.float32)
    lo, hi = np.percentile(first, (0.5, 99.5)) if first.size else (0.0, 1.0)
    scaled = np.clip((first - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    return np.repeat((scaled * 255).round().astype(np.uint8)[None], 3, axis=0)


def _degenerate(shape: tuple[int, ...], pixel_mm: tuple[float, float]) -> bool:
    """A strip rather than a picture: a few voxels thick, or very thin in millimetres."""
    rows_mm, cols_mm = shape[0] * pixel_mm[0], shape[1] * pixel_mm[1]
    return min(shape) < _MIN_VIEW_SIDE or min(rows_mm, cols_mm) < _MIN_VIEW_ASPECT * max(
        rows_mm, cols_mm
    )


def _busiest(fg: np.ndarray, axis: int) -> int:
    """Index along ``axis`` of the slice with the most foreground (the middle when none)."""
    other = tuple(a for a in range(fg.ndim) if a != axis)
    counts = fg.sum(axis=other)
    return int(np.argmax(counts)) if counts.any() else fg.shape[axis] // 2


def _resize(array: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Nearest-neighbour resize (voxels stay crisp blocks, labels stay labels)."""
    if array.shape[:2] == (rows, cols):
        return np.ascontiguousarray(array)
    r = (np.arange(rows) * array.shape[0] // rows).astype(int)
    c = (np.arange(cols) * array.shape[1] // cols).astype(int)
    return np.ascontiguousarray(array[r][:, c])


def _overlay(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Fill each class semi-transparently and draw its outline opaque."""
    out = rgb.astype(np.float32)
    thick = max(1, min(labels.shape) // 200)
    for k in sorted(int(v) for v in np.unique(labels) if v > 0):
        region = labels == k
        colour = np.asarray(colour_of(k), dtype=np.float32)
        out[region] = (1 - _FILL_ALPHA) * out[region] + _FILL_ALPHA * colour
        inner = _erode(region, thick)
        out[region & ~inner] = colour
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _erode(region: np.ndarray, iterations: int) -> np.ndarray:
    """``scipy.ndimage.binary_erosion`` with its default cross and ``border_value=0``, in numpy.

    (scipy's import alone costs more CPU than drawing the picture.)
    """
    inner = region.copy()
    for _ in range(iterations):
        padded = np.pad(inner, 1, constant_values=False)
        inner = (
            padded[1:-1, 1:-1]
            & padded[:-2, 1:-1]
            & padded[2:, 1:-1]
            & padded[1:-1, :-2]
            & padded[1:-1, 2:]
        )
    return inner


def _font() -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=14)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def describe_views(views: Sequence[View]) -> str:
    """``"axial 256x256, coronal 256x80"``: what a picture holds, for the command's output."""
    return ", ".join(f"{v.name} {v.rgb.shape[1]}x{v.rgb.shape[0]}" for v in views)
