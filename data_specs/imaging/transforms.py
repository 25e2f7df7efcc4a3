"""MONAI transform chains for a task: load, orient, resample, normalise, fit, augment.

MONAI and torch are imported inside functions: importing ``data_specs`` stays light. Readers
follow the scan's format: MONAI's ``NibabelReader`` for NIfTI, its ``PILReader`` (with the mode
conversion of ``data_specs.imaging.imageio``) for pictures, and a pydicom series reader for DICOM
(MONAI's ``ITKReader`` needs the ``itk`` package, which fedseg does not ship).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from data_specs.constants import ImageFormat
from data_specs.errors import DataSpecError, ImageReadError, ImageWriteError
from data_specs.imaging.imageio import (
    PICTURE_AFFINE,
    PIL_SUFFIXES,
    ImageGeometry,
    detect_format,
    pil_image_mode,
    pil_label_mode,
    read_image,
    write_mask_like,
)
from data_specs.task_spec import TaskSpec

if TYPE_CHECKING:
    from monai.transforms import Compose

    from data_specs.imaging.label_mapping import LabelMapping

FitMode = Literal["crop", "random", "resize", "none"]
IMAGE, LABEL = "image", "label"
_ROTATE_RADIANS = 0.26  # about 15 degrees: small enough to keep anatomy plausible


@functools.cache
def _quiet_monai_dicom_plugin() -> None:
    """MONAI builds its pydicom reader in every ``LoadImage`` once pydicom is installed (highdicom
    needs it), and that reader announces on each build that no GPU decoder is available."""
    import logging
    import warnings

    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")


@functools.cache
def _reader_classes() -> tuple[type, type]:
    from monai.data import ImageReader, PILReader

    _quiet_monai_dicom_plugin()
    from monai.utils import ensure_tuple

    class DicomSeriesReader(ImageReader):  # type: ignore[misc]
        """A DICOM series folder (or one .dcm file) through ``data_specs.imaging.imageio`` (pydicom)."""

        def __init__(self, label: bool = False) -> None:
            super().__init__()
            self.label = label

        def verify_suffix(self, filename: Any) -> bool:
            return all(_format_or_none(f) == ImageFormat.DICOM for f in ensure_tuple(filename))

        def read(self, data: Any, **kwargs: Any) -> Any:
            files = ensure_tuple(data)  # several: one series per channel, geometry checked
            try:
                return read_image(files[0] if len(files) == 1 else list(files), label=self.label)
            except DataSpecError as exc:
                # Raised later, from get_data: LoadImage would otherwise fall back to MONAI's
                # pydicom reader, which reads a folder of two series as one scan.
                return exc

        def get_data(self, img: Any) -> tuple[np.ndarray, dict[str, Any]]:
            if isinstance(img, DataSpecError):
                raise img
            meta = {
                "affine": img.affine.copy(),
                "original_affine": img.affine.copy(),
                "spatial_shape": np.asarray(img.spatial_shape),
                "original_channel_dim": 0,
                "space": "RAS",
            }
            return img.array, meta

    class PictureReader(PILReader):  # type: ignore[misc]
        """MONAI's ``PILReader``, also for TIFF and GIF."""

        def verify_suffix(self, filename: Any) -> bool:
            names = [str(f).lower() for f in ensure_tuple(filename)]
            return all(n.endswith(PIL_SUFFIXES) for n in names)

    return DicomSeriesReader, PictureReader


def _format_or_none(path: Any) -> ImageFormat | None:
    try:
        return detect_format(Path(path))
    except ImageReadError:
        return None


def reader_for(fmt: ImageFormat, *, label: bool = False) -> Any:
    """The MONAI ``ImageReader`` for a format.

    Args:
        fmt: the scan's format. Example: ``detect_format(path)``.
        label: reading a label map (palette indices kept for pictures). Default False.
    """
    from monai.data import NibabelReader

    dicom_reader, picture_reader = _reader_classes()
    if fmt == ImageFormat.NIFTI:
        return NibabelReader()
    if fmt == ImageFormat.DICOM:
        return dicom_reader(label=label)
    return picture_reader(converter=pil_label_mode if label else pil_image_mode)


def _spacing(spec: TaskSpec, target_spacing: Sequence[float] | None) -> tuple[float, ...] | None:
    # The experiment's plan (spec) wins over the site manifest's own target spacing.
    if spec.target_spacing is not None:
        target_spacing = spec.target_spacing
    if target_spacing is None:
        return None
    # A 2D task on volumes resamples in-plane only; 0 keeps the slice spacing.
    return (*target_spacing, 0.0) if spec.spatial_dims == 2 else tuple(target_spacing)


def load_transforms(
    spec: TaskSpec,
    *,
    image_format: ImageFormat = ImageFormat.NIFTI,
    label_format: ImageFormat | None = None,
    target_spacing: Sequence[float] | None = None,
    nonzero: bool = False,
    label_mapping: LabelMapping | None = None,
) -> Compose:
    """Deterministic chain from file paths to a normalised scan in the network's frame.

    ``LoadImaged`` (reader by format), ``EnsureChannelFirstd``, ``Orientationd("RAS")`` for 3D
    tasks (a 2D task keeps the acquisition axes so slices stay slices), ``Spacingd`` when a
    target spacing is given (bilinear image, nearest label), then intensity normalisation of
    the image: ``zscore`` (``NormalizeIntensityd``), ``minmax`` (``ScaleIntensityd`` to [0, 1]),
    per channel, ``ct`` (``ScaleIntensityRanged``: clip to the federation's window and z-score with
    its mean and sd in one linear map) or ``none``. Every spatial step is invertible (``Invertd``).

    Args:
        spec: the task spec (dims, intensity). Example: ``TaskSpec(out_channels=4)``.
        image_format: how images are stored. Default ``ImageFormat.NIFTI``.
        label_format: how labels are stored; None loads no label. Default None.
        target_spacing: voxel spacing to resample to (in-plane for a 2D task). Default None.
        nonzero: z-score statistics over non-zero voxels only (MRI with zero background), and
            zero voxels stay zero. Default False.
        label_mapping: the manifest's stored value -> class rule, applied right after the
            label is read. Default None.

    Returns:
        A ``Compose`` taking ``{"image": path or [channel paths], "label": path}``.
    """
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        ScaleIntensityd,
        ScaleIntensityRanged,
        Spacingd,
    )

    keys = [IMAGE] if label_format is None else [IMAGE, LABEL]
    steps: list[Any] = [LoadImaged(IMAGE, reader=reader_for(image_format), image_only=True)]
    if label_format is not None:
        steps.append(
            LoadImaged(LABEL, reader=reader_for(label_format, label=True), image_only=True)
        )
        if label_mapping is not None:
            from monai.transforms import Lambdad

            steps.append(Lambdad(LABEL, label_mapping))
    steps.append(EnsureChannelFirstd(keys))
    if spec.spatial_dims == 3:
        # Explicit labels: RAS as nibabel and data_specs.imaging.imageio define it (and no FutureWarning).
        steps.append(Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))))
    pixdim = _spacing(spec, target_spacing)
    if pixdim is not None:
        modes = ["bilinear", "nearest"][: len(keys)]
        steps.append(Spacingd(keys, pixdim=pixdim, mode=modes))
    if spec.intensity == "zscore":
        steps.append(NormalizeIntensityd(IMAGE, nonzero=nonzero, channel_wise=True))
    elif spec.intensity == "minmax":
        steps.append(ScaleIntensityd(IMAGE, minv=0.0, maxv=1.0, channel_wise=True))
    elif spec.intensity == "ct":
        assert spec.clip_range is not None and spec.norm_mean_std is not None  # spec validator
        (lo, hi), (mean, sd) = spec.clip_range, spec.norm_mean_std
        steps.append(
            ScaleIntensityRanged(
                IMAGE, a_min=lo, a_max=hi, b_min=(lo - mean) / sd, b_max=(hi - mean) / sd, clip=True
            )
        )
    return Compose(steps)


def inference_transforms(
    spec: TaskSpec,
    *,
    image_format: ImageFormat = ImageFormat.NIFTI,
    target_spacing: Sequence[float] | None = None,
    nonzero: bool = False,
) -> Compose:
    """The chain for one scan at inference: ``load_transforms`` without label, crop or augmentation.

    Its spatial steps are invertible: ``monai.transforms.Invertd(keys="pred", transform=chain,
    orig_keys="image", nearest_interp=True)`` maps a prediction back to the scan's grid, and
    ``prepare_scan`` does exactly that for you (``PreparedScan.write_mask``).

    Args:
        spec: the task spec. Example: ``TaskSpec(out_channels=4)``.
        image_format: how the scan is stored. Default ``ImageFormat.NIFTI``.
        target_spacing: the spacing the model was trained at. Default None.
        nonzero: as for training. Default False.
    """
    return load_transforms(
        spec, image_format=image_format, target_spacing=target_spacing, nonzero=nonzero
    )


def fit_transforms(
    spec: TaskSpec, fit: FitMode = "crop", *, keys: Sequence[str] = (IMAGE, LABEL), sliced: bool
) -> Compose:
    """Bring items to ``spec.patch_size``: centre crop / zero pad, resize, or leave as they are.

    Args:
        spec: the task spec. Example: ``TaskSpec(patch_size=(32, 32))``.
        fit: ``crop`` (``ResizeWithPadOrCropd``), ``random`` (zero pad up to the patch size
            only; ``augment_transforms(random_crop=True)`` then draws a random patch per item),
            ``resize`` (``Resized``: area for images, nearest for labels) or ``none``.
            Default ``crop``.
        keys: keys present. Default ``("image", "label")``.
        sliced: items are volumes that a 2D task will slice along the last axis, so the
            slice axis keeps its size. Required.
    """
    from monai.transforms import Compose, Resized, ResizeWithPadOrCropd, SpatialPadd

    size = (*spec.patch_size, -1) if sliced else tuple(spec.patch_size)
    if fit == "none":
        return Compose([])
    if fit == "random":
        return Compose([SpatialPadd(list(keys), spatial_size=size)])
    if fit == "crop":
        return Compose([ResizeWithPadOrCropd(list(keys), spatial_size=size)])
    steps = [Resized(IMAGE, spatial_size=size, mode="area")]
    if LABEL in keys:
        steps.append(Resized(LABEL, spatial_size=size, mode="nearest"))
    return Compose(steps)


def augment_transforms(
    spec: TaskSpec,
    *,
    seed: int = 0,
    labelled: bool = True,
    random_crop: bool = False,
    augment: bool = True,
    foreground_ratio: float = 0.0,
) -> Compose:
    """Random training transforms, reproducible for a seed; ends in plain tensors.

    Optionally a random patch of ``spec.patch_size`` per item (items fitted with
    ``fit="random"``, so training sees the whole field of view that sliding-window inference
    will cover), then flips along each spatial axis (p=0.5 each), a small rotation (up to about
    15 degrees per plane, p=0.5; nearest for the label), intensity scale and shift of up to
    10 % (p=0.5 each).

    Args:
        spec: the task spec (dims, patch size). Example: ``TaskSpec()``.
        seed: seed of the random state. Default 0.
        labelled: items carry a label. Default True.
        random_crop: draw a random patch first. Default False.
        augment: apply the flips, rotation and intensity changes. Default True.
        foreground_ratio: with ``random_crop`` on labelled items, the share of patches centred
            on a labelled voxel (MONAI ``RandCropByPosNegLabeld``); the others are centred on
            background. Default 0 (uniformly random patches).
    """
    from monai.transforms import (
        Compose,
        RandFlipd,
        RandRotated,
        RandScaleIntensityd,
        RandShiftIntensityd,
        RandSpatialCropd,
    )

    keys = [IMAGE, LABEL] if labelled else [IMAGE]
    crop: list[Any] = []
    if random_crop and labelled and foreground_ratio > 0:
        crop = [_foreground_crop(spec, foreground_ratio)]
    elif random_crop:
        crop = [RandSpatialCropd(keys, roi_size=tuple(spec.patch_size), random_size=False)]
    if not augment:
        plain = Compose([*crop, PlainItem()])
        plain.set_random_state(seed=seed)
        return plain
    modes = ["bilinear", "nearest"][: len(keys)]
    # In 2D only range_x (the in-plane angle) applies; 3D rotates about every axis.
    out_of_plane = 0.0 if spec.spatial_dims == 2 else _ROTATE_RADIANS
    steps: list[Any] = [*crop]
    steps += [RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(spec.spatial_dims)]
    steps += [
        RandRotated(
            keys,
            range_x=_ROTATE_RADIANS,
            range_y=out_of_plane,
            range_z=out_of_plane,
            prob=0.5,
            mode=modes,
            padding_mode="zeros",
            keep_size=True,
        ),
        RandScaleIntensityd(IMAGE, factors=0.1, prob=0.5),
        RandShiftIntensityd(IMAGE, offsets=0.1, prob=0.5),
        PlainItem(),
    ]
    pipeline = Compose(steps)
    pipeline.set_random_state(seed=seed)
    return pipeline


def _foreground_crop(spec: TaskSpec, ratio: float) -> Any:
    from monai.transforms import RandCropByPosNegLabeld

    class OneForegroundCrop(RandCropByPosNegLabeld):  # type: ignore[misc]
        """``RandCropByPosNegLabeld`` with one sample per item, returned as the item itself."""

        def __call__(self, data: Any, lazy: bool | None = None) -> Any:
            with warnings.catch_warnings():
                # A slice without any label falls back to background centres, with a warning.
                warnings.simplefilter("ignore")
                return super().__call__(data)[0]

    # Label values > 0 count as foreground; pos / (pos + neg) is the foreground share.
    return OneForegroundCrop(
        [IMAGE, LABEL],
        label_key=LABEL,
        spatial_size=tuple(spec.patch_size),
        pos=ratio,
        neg=1.0 - ratio,
        num_samples=1,
        allow_smaller=True,
    )


class PlainItem:
    """Last step of every item: a fresh dict of plain tensors, float32 image and int64 label.

    MONAI metadata and transform traces are dropped, so batches carry no file names and
    collate cheaply. Other keys (``case``, ``slice``) pass through.
    """

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        import torch

        out = {k: v for k, v in data.items() if k not in (IMAGE, LABEL) and "_transforms" not in k}
        out[IMAGE] = _plain(data[IMAGE]).to(torch.float32)
        if LABEL in data:
            label = _plain(data[LABEL])
            out[LABEL] = (label.round() if label.is_floating_point() else label).to(torch.int64)
        return out


def _plain(x: Any) -> Any:
    import torch

    x = x.as_tensor() if hasattr(x, "as_tensor") else x
    return torch.as_tensor(x)


@dataclass
class PreparedScan:
    """A scan ready for the network, and the way back to the scan's own voxel grid.

    Args:
        image: float32 ``(C, *spatial)`` tensor in the network's frame (RAS and resampled for a
            3D task; acquisition axes for a 2D task), normalised, not cropped.
        sliced: a 2D task on a volume: run the network on ``image[..., z]`` for each ``z`` and
            stack the label maps along the last axis.
        geometry: the scan's own spatial shape and RAS affine, for ``write_mask_like``.
    """

    image: Any
    sliced: bool
    geometry: ImageGeometry
    _loaded: Any = field(repr=False)
    _pipeline: Any = field(repr=False)

    def to_scan_geometry(self, label_map: Any) -> np.ndarray:
        """Undo orientation and resampling (nearest neighbour) of a predicted label map.

        Args:
            label_map: integer ``(*spatial)`` or ``(1, *spatial)`` in the frame of ``image``.
                Example: ``logits.argmax(0)``.

        Returns:
            int32 array of the scan's spatial shape, ``geometry.spatial_shape``.

        Raises:
            ImageWriteError: the label map's shape differs from ``image``'s spatial shape.
        """
        import torch
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        lm = torch.as_tensor(
            label_map.detach().cpu() if hasattr(label_map, "detach") else label_map
        )
        spatial = tuple(self.image.shape[1:])
        if lm.ndim == len(spatial):
            lm = lm[None]
        if tuple(lm.shape) != (1, *spatial):
            raise ImageWriteError(
                f"expected a label map of shape {spatial} (the prepared image's), found "
                f"{tuple(lm.shape)}"
            )
        if not self._loaded.applied_operations:  # nothing was oriented or resampled
            return lm[0].numpy().astype(np.int32)
        pred = MetaTensor(lm.to(torch.float32), meta=dict(self._loaded.meta))
        pred.applied_operations = list(self._loaded.applied_operations)
        inverse = Invertd("pred", transform=self._pipeline, orig_keys=IMAGE, nearest_interp=True)
        out = inverse({IMAGE: self._loaded, "pred": pred})["pred"]
        return np.rint(np.asarray(_plain(out))[0]).astype(np.int32)

    def write_mask(self, label_map: Any, path: str | Path) -> None:
        """``to_scan_geometry`` then ``write_mask_like`` to a NIfTI file (atomic).

        Args:
            label_map: as for ``to_scan_geometry``.
            path: ``.nii`` or ``.nii.gz`` destination. Example: ``"out/scan_mask.nii.gz"``.
        """
        write_mask_like(self.to_scan_geometry(label_map), self.geometry, path)


def _data_spec_cause(exc: BaseException) -> DataSpecError | None:
    """The first of our own errors in an exception's chain (MONAI wraps them)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, DataSpecError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def prepare_scan(
    path: str | Path | Sequence[str | Path],
    spec: TaskSpec,
    *,
    target_spacing: Sequence[float] | None = None,
    nonzero: bool = False,
) -> PreparedScan:
    """Load one scan for inference with the training chain minus cropping and augmentation.

    Args:
        path: NIfTI file, DICOM series folder or picture, or one such file per channel
            (same geometry). Example: ``"scan.nii.gz"``.
        spec: the task spec. Example: ``TaskSpec(out_channels=4)``.
        target_spacing: the manifest's ``target_spacing`` the model was trained with. Default None.
        nonzero: as for training. Default False.

    Raises:
        ImageReadError: the scan does not load, or its dimensions do not suit the task.
    """
    import torch

    files = [path] if isinstance(path, str | Path) else list(path)
    fmt = detect_format(files[0])
    if len(files) > 1:
        read_image(files)  # the channels share one grid, or a clear error now
    pipeline = inference_transforms(
        spec, image_format=fmt, target_spacing=target_spacing, nonzero=nonzero
    )
    source: str | list[str] = str(files[0]) if len(files) == 1 else [str(f) for f in files]
    try:
        loaded = pipeline({IMAGE: source})[IMAGE]
    except Exception as exc:  # MONAI wraps reader errors in RuntimeError
        own = _data_spec_cause(exc)
        if own is not None:  # our reader already said what is wrong (two series, ...)
            raise ImageReadError(str(own)) from exc
        raise ImageReadError(
            f"{path}: expected a readable {fmt} scan, found {type(exc.__cause__ or exc).__name__}"
        ) from exc
    ndim = loaded.ndim - 1
    if ndim not in ((3,) if spec.spatial_dims == 3 else (2, 3)):
        raise ImageReadError(
            f"{path}: expected a scan suiting a {spec.spatial_dims}D task, found {ndim}D"
        )
    meta = loaded.meta
    affine = np.asarray(meta.get("original_affine", np.eye(4)), dtype=np.float64)
    if affine.shape != (4, 4):  # MONAI keeps (n+1)x(n+1) for a 2D picture
        full = np.eye(4)
        full[:ndim, :ndim], full[:ndim, 3] = affine[:ndim, :ndim], affine[:ndim, ndim]
        affine = full
    if fmt == ImageFormat.PIL:  # ITK's (every viewer's) picture geometry, not MONAI's identity
        affine = PICTURE_AFFINE.copy()
    shape = tuple(int(s) for s in np.asarray(meta["spatial_shape"]).tolist())
    return PreparedScan(
        image=_plain(loaded).to(torch.float32),
        sliced=spec.spatial_dims == 2 and ndim == 3,
        geometry=ImageGeometry(spatial_shape=shape, affine=affine),
        _loaded=loaded,
        _pipeline=pipeline,
    )
