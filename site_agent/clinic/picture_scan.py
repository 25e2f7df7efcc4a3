"""A 2D picture prepared for the network without MONAI: what ``prepare_scan`` does to it, in torch.

For a photograph (PNG, JPEG, TIFF, GIF, BMP) and a 2D task without resampling, MONAI's
inference chain (``data_specs.imaging.transforms.prepare_scan``) only reads the picture (Pillow, as
``(C, x, y)`` float32), puts the channel first and normalises intensities; no spatial step is
applied, so the mask needs no inversion. Importing MONAI costs about 2 s of CPU, more than
the whole prediction of a small picture, so ``fedseg site infer`` takes this path instead:
Pillow + numpy + torch, the same statistics MONAI computes (``torch.mean`` and the biased
``torch.std`` per channel, as Python floats), and the plain-torch U-Net
(``site_agent.clinic.plain_unet``). Tests compare it with ``prepare_scan`` on pictures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from data_specs.constants import ImageFormat
from data_specs.imaging.imageio import PICTURE_AFFINE, ImageGeometry, detect_format, read_image
from data_specs.task_spec import TaskSpec

_PLAIN_INTENSITIES = ("zscore", "minmax", "none")


def plain_picture_path(
    scan: Path | Sequence[Path], spec: TaskSpec, target_spacing: Sequence[float] | None
) -> bool:
    """Whether ``scan`` is one picture that a 2D task takes without resampling (no MONAI needed).

    Args:
        scan: the scan, or its channel files.
        spec: the task spec.
        target_spacing: the site manifest's target spacing, if any.
    """
    files = [scan] if isinstance(scan, Path) else list(scan)
    if len(files) != 1 or spec.spatial_dims != 2 or spec.intensity not in _PLAIN_INTENSITIES:
        return False
    if spec.target_spacing is not None or target_spacing is not None:
        return False
    try:
        return detect_format(Path(files[0])) == ImageFormat.PIL
    except Exception:
        return False


def prepare_picture(path: Path, spec: TaskSpec) -> tuple[torch.Tensor, ImageGeometry]:
    """The picture as ``(C, x, y)`` float32, normalised as training did, and its geometry.

    Args:
        path: the picture. Example: ``Path("scan.png")``.
        spec: a 2D task spec whose intensity is ``zscore``, ``minmax`` or ``none``.

    Raises:
        ImageReadError: the picture cannot be read.
    """
    image = read_image(path)
    x = torch.from_numpy(np.ascontiguousarray(image.array, dtype=np.float32))
    if spec.intensity == "zscore":
        for i in range(x.shape[0]):
            sub = torch.mean(x[i]).item()
            div = torch.std(x[i], unbiased=False).item()
            x[i] = (x[i] - sub) / (div if div != 0.0 else 1.0)
    elif spec.intensity == "minmax":
        for i in range(x.shape[0]):
            lo, hi = x[i].min(), x[i].max()
            x[i] = x[i] * 0.0 if lo == hi else ((x[i] - lo) / (hi - lo)) * 1.0 + 0.0
    geometry = ImageGeometry(
        spatial_shape=tuple(int(s) for s in x.shape[1:]), affine=PICTURE_AFFINE.copy()
    )
    return x, geometry
