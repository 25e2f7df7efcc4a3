"""DICOM SEG for a DICOM scan (highdicom): the mask as PACS stores it, referencing the source series.

The frames follow the series' instances in the order ``data_specs.imaging.imageio`` read them (ITK's
slice order), so frame ``k`` is ``mask[:, :, k]`` transposed, on the instance it was predicted
for; highdicom records that reference for every frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from data_specs.errors import ImageWriteError
from data_specs.files import atomic_writer
from data_specs.imaging.dicom_read import series_files

__all__ = ["series_files", "write_dicom_seg"]


def write_dicom_seg(
    mask: Any,
    source: str | Path,
    path: str | Path,
    *,
    class_names: Mapping[int, str],
    series_number: int = 900,
) -> None:
    """Write a labelled mask as a DICOM Segmentation of the series it was predicted on (atomic).

    Args:
        mask: integer ``(x, y, z)`` (or ``(x, y)`` for a single image) in the series' grid, as
            ``read_image(source)`` reads it. Example: ``segmentation.mask``.
        source: the DICOM series folder or single ``.dcm`` file. Example: ``"ct_series"``.
        path: the ``.dcm`` to write. Example: ``"ct_mask.dcm"``.
        class_names: foreground class names by value; every value in the mask needs one.
            Example: ``{1: "liver"}``.
        series_number: the SEG's series number. Default 900.

    Raises:
        ImageWriteError: the mask does not match the series, or highdicom refuses it.
    """
    import logging

    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    # highdicom explains its encoding choices (an empty mask keeps every frame) as warnings
    logging.getLogger("highdicom").setLevel(logging.ERROR)
    path = Path(path)
    arr = np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask)
    files = series_files(source)
    datasets = [pydicom.dcmread(str(f)) for f in files]
    frames = arr.T if arr.ndim == 2 else np.transpose(arr, (2, 1, 0))  # (frames, rows, cols)
    if frames.ndim == 2:
        frames = frames[None]
    if len(datasets) == 1 and int(getattr(datasets[0], "NumberOfFrames", 1)) > 1:
        expected = (int(datasets[0].NumberOfFrames), datasets[0].Rows, datasets[0].Columns)
    else:
        expected = (len(datasets), datasets[0].Rows, datasets[0].Columns)
    if tuple(frames.shape) != expected:
        raise ImageWriteError(
            f"{path}: expected a mask of {expected[0]} frame(s) of {expected[1]}x{expected[2]} "
            f"to match the series, found {tuple(frames.shape)}"
        )
    present = sorted(int(v) for v in np.unique(frames) if v > 0)
    numbers = list(range(1, max([*present, *class_names], default=0) + 1))
    if not numbers:
        numbers = [1]  # a SEG needs a segment even when nothing was found
    algorithm = hd.AlgorithmIdentificationSequence(
        name="fedseg", version="0.1", family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=k,
            segment_label=class_names.get(k, f"class {k}")[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for k in numbers
    ]
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets,
            pixel_array=frames.astype(np.uint8 if max(numbers) < 256 else np.uint16),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="fedseg",
            manufacturer_model_name="fedseg U-Net",
            software_versions="0.1",
            device_serial_number="fedseg",
            series_description="fedseg segmentation",
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ImageWriteError(f"{path}: highdicom refused the segmentation: {exc}") from exc
    if not path.parent.is_dir():
        raise ImageWriteError(f"{path}: expected an existing folder {path.parent}, found none")
    with atomic_writer(path) as fh:
        seg.save_as(fh)
