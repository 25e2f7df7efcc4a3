"""A picture of a predicted mask for the clinician: the scan with one coloured contour per class."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from site_agent.errors import WorkDirError

_COLOURS = (
    "#e6194b",
    "#3cb44b",
    "#ffe119",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#46f0f0",
    "#f032e6",
    "#bcf60c",
    "#fabebe",
    "#008080",
    "#e6beff",
)


def class_names_for(num_classes: int, labels: Mapping[str, str] | None = None) -> dict[int, str]:
    """Names of the foreground classes: the manifest's labels, else ``class k``.

    Args:
        num_classes: classes including background. Example: ``4``.
        labels: manifest labels ``{"0": "background", "1": "RV", ...}``. Default None.
    """
    labels = labels or {}
    return {k: labels.get(str(k), f"class {k}") for k in range(1, num_classes)}


def save_mask_picture(
    image: np.ndarray,
    mask: np.ndarray,
    path: str | Path,
    *,
    class_names: Mapping[int, str],
    spacing: Sequence[float] | None = None,
    title: str = "",
) -> None:
    """Write a PNG: the image (2D) or three orthogonal slices (3D) with mask contours.

    The 3D slices pass through the centre of the predicted foreground, or through the middle of
    the volume when nothing was predicted.

    Args:
        image: the scan, ``(C, *spatial)`` or ``(*spatial)``; the first channel is shown.
        mask: integer mask of the scan's spatial shape.
        path: the ``.png`` to write (atomically). Example: ``"case_mask.png"``.
        class_names: foreground class names by value, for the legend. Example: ``{1: "LV"}``.
        spacing: voxel size per spatial axis, for true proportions. Default None (isotropic).
        title: figure title. Default ``""``.

    Raises:
        WorkDirError: the picture cannot be written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    img = image[0] if image.ndim == mask.ndim + 1 else image
    spacing = tuple(spacing) if spacing else (1.0,) * mask.ndim
    views = _views(img, mask, spacing)
    fig = Figure(figsize=(4.2 * len(views), 4.8), dpi=100)
    FigureCanvasAgg(fig)
    present = sorted(int(v) for v in np.unique(mask) if v > 0)
    for i, (name, pic, lab, aspect) in enumerate(views):
        ax = fig.add_subplot(1, len(views), i + 1)
        ax.imshow(pic.T, cmap="gray", origin="lower", aspect=aspect, interpolation="nearest")
        for k in present:
            region = (lab == k).T.astype(float)
            if region.any() and region.shape[0] > 1 and region.shape[1] > 1:
                # Default origin: Z[0, 0] at (0, 0), the centre of imshow's first pixel.
                ax.contour(region, levels=[0.5], colors=[_colour(k)], linewidths=1.2)
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    handles = [
        Line2D([], [], color=_colour(k), label=class_names.get(k, f"class {k}")) for k in present
    ]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False)
    else:
        fig.text(0.5, 0.03, "no foreground class predicted", ha="center")
    if title:
        fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    from data_specs.files import atomic_write_bytes

    try:
        atomic_write_bytes(Path(path), buffer.getvalue())
    except OSError as exc:
        raise WorkDirError(f"cannot write the picture {path}: {exc.strerror}") from exc


def _views(
    img: np.ndarray, mask: np.ndarray, spacing: tuple[float, ...]
) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    if mask.ndim == 2:
        return [("image", img, mask, spacing[1] / spacing[0])]
    # Through the predicted structure's centre when there is one, else through the middle.
    fg = np.argwhere(mask > 0)
    cx, cy, cz = (int(c) for c in (fg.mean(axis=0) if len(fg) else np.array(mask.shape) // 2))
    sx, sy, sz = spacing[:3]
    return [
        (f"axial (k={cz})", img[:, :, cz], mask[:, :, cz], sy / sx),
        (f"coronal (j={cy})", img[:, cy, :], mask[:, cy, :], sz / sx),
        (f"sagittal (i={cx})", img[cx, :, :], mask[cx, :, :], sz / sy),
    ]


def _colour(k: int) -> str:
    return _COLOURS[(k - 1) % len(_COLOURS)]
