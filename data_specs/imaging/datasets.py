"""Torch datasets of a manifest split: each scan loaded once, volumes sliced for a 2D task.

Loading (read, orient, resample, normalise, fit to the patch) runs once per scan, in threads,
and the results stay in memory; only the random augmentation runs per item. A 2D task on 3D
volumes (ACDC) slices along the last (acquisition) axis after the whole volume is normalised,
so every slice of a scan shares one intensity scale.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from data_specs.constants import SplitName
from data_specs.errors import ImageReadError, ManifestError
from data_specs.imaging.imageio import detect_format
from data_specs.imaging.transforms import (
    IMAGE,
    LABEL,
    FitMode,
    PlainItem,
    augment_transforms,
    fit_transforms,
    load_transforms,
)
from data_specs.manifests.manifest import DatasetManifest, ResolvedCase
from data_specs.task_spec import TaskSpec

if TYPE_CHECKING:
    from torch.utils.data import Dataset


def check_compatible(manifest: DatasetManifest, spec: TaskSpec) -> None:
    """Refuse a manifest whose dims, channels or classes differ from the task spec's.

    Args:
        manifest: the site's manifest.
        spec: the experiment's task spec. Example: ``TaskSpec(out_channels=4)``.

    Raises:
        ManifestError: naming each difference.
    """
    pairs = [
        ("spatial_dims", manifest.spatial_dims, spec.spatial_dims),
        ("channels", manifest.num_channels, spec.in_channels),
        ("classes", manifest.num_classes, spec.out_channels),
    ]
    wrong = [
        f"{n}: task spec expects {want}, manifest has {have}"
        for n, have, want in pairs
        if have != want
    ]
    if wrong:
        raise ManifestError(
            f"manifest of site {manifest.site_id} does not fit the task: " + "; ".join(wrong)
        )


def build_dataset(
    manifest: DatasetManifest,
    spec: TaskSpec,
    split: SplitName | str,
    *,
    train: bool = False,
    seed: int = 0,
    fit: FitMode = "crop",
    foreground_only: bool = False,
    nonzero: bool = False,
    augment: bool | None = None,
    workers: int | None = None,
    foreground_ratio: float = 0.0,
) -> Dataset:
    """A dataset of one split, items ``{"image", "label", "case", "slice"}``.

    ``image`` is a float32 tensor ``(C, *patch)``, ``label`` an int64 tensor ``(1, *patch)``
    (absent for an unlabelled case), ``case`` the case's index in the split and ``slice`` its
    slice index for a 2D task on volumes (-1 otherwise). With ``fit="none"`` items keep their
    own size (batch size 1, or sliding-window evaluation).

    Args:
        manifest: the site's manifest (loaded, so paths resolve). Example: ``load_manifest(p)``.
        spec: the task spec. Example: ``TaskSpec(out_channels=4, patch_size=(32, 32))``.
        split: ``training``, ``validation`` or ``test``.
        train: training use: augmentation on unless ``augment`` says otherwise. Default False.
        seed: seed of the augmentation. Default 0.
        fit: ``crop`` (centre crop / zero pad), ``random`` (a random patch per item each
            time it is read: training over the whole field of view), ``resize`` or ``none``.
            Default ``crop``.
        foreground_only: keep only slices with some label (2D task on volumes). Default False.
        nonzero: z-score over non-zero voxels only. Default False.
        augment: force augmentation on or off; None follows ``train``. Default None.
        workers: threads loading scans; None picks ``min(cpu count, 4)``. Default None.
        foreground_ratio: with ``fit="random"``, the share of patches centred on a labelled
            voxel. Default 0 (uniform).

    Returns:
        A ``monai.data.Dataset`` (a torch ``Dataset``). Augmentation draws from one random
        state: iterate with ``num_workers=0`` or ``monai.data.DataLoader`` for reproducibility.

    Raises:
        ManifestError: the manifest does not fit the spec, or a path escapes its root.
        ImageReadError: a scan does not load (the message names the file).
    """
    from monai.data import Dataset

    check_compatible(manifest, spec)
    cases = [manifest.resolve(c) for c in manifest.iter_cases(split)]
    loader = _CaseLoader(spec, manifest, fit, nonzero)
    n_threads = workers or min(os.cpu_count() or 1, 4)
    with ThreadPoolExecutor(max_workers=max(1, n_threads)) as pool:
        per_case = list(pool.map(loader, range(len(cases)), cases))
    items = [
        item
        for case_items in per_case
        for item in case_items
        if not (foreground_only and LABEL in item and not bool(item[LABEL].any()))
    ]
    labelled = all(LABEL in item for item in items)
    do_augment = augment if augment is not None else train
    if do_augment or fit == "random":
        transform = augment_transforms(
            spec,
            seed=seed,
            labelled=labelled,
            random_crop=fit == "random",
            augment=do_augment,
            foreground_ratio=foreground_ratio,
        )
        return Dataset(items, transform=transform)
    return Dataset(items, transform=PlainItem())


class _CaseLoader:
    """Loads one case into finished items; pipelines are built once per format pair."""

    def __init__(self, spec: TaskSpec, manifest: DatasetManifest, fit: FitMode, nonzero: bool):
        self.spec, self.fit, self.nonzero = spec, fit, nonzero
        self.target_spacing = manifest.target_spacing
        self.label_mapping = manifest.label_mapping
        self._pipelines: dict[Any, Any] = {}

    def _pipeline(self, key: Any, build: Any) -> Any:
        if key not in self._pipelines:  # a race only builds the same pipeline twice
            self._pipelines[key] = build()
        return self._pipelines[key]

    def __call__(self, index: int, case: ResolvedCase) -> list[dict[str, Any]]:
        image_fmt = detect_format(case.image)
        label_fmt = detect_format(case.label) if case.label is not None else None
        load = self._pipeline(
            (image_fmt, label_fmt),
            lambda: load_transforms(
                self.spec,
                image_format=image_fmt,
                label_format=label_fmt,
                target_spacing=self.target_spacing,
                nonzero=self.nonzero,
                label_mapping=self.label_mapping,
            ),
        )
        data: dict[str, Any] = {IMAGE: case.image_source}
        if case.label is not None:
            data[LABEL] = str(case.label)
        try:
            loaded = load(data)
        except Exception as exc:  # MONAI wraps reader errors in RuntimeError
            raise ImageReadError(
                f"{case.image}: expected a readable image and label pair, found "
                f"{type(exc.__cause__ or exc).__name__} while loading"
            ) from exc
        ndim = loaded[IMAGE].ndim - 1
        allowed = (3,) if self.spec.spatial_dims == 3 else (2, 3)
        if ndim not in allowed:
            raise ImageReadError(
                f"{case.image}: expected a {' or '.join(f'{d}D' for d in allowed)} scan for a "
                f"{self.spec.spatial_dims}D task, found {ndim}D"
            )
        sliced = self.spec.spatial_dims == 2 and ndim == 3
        keys = tuple(k for k in (IMAGE, LABEL) if k in loaded)
        fit = self._pipeline(
            (sliced, keys), lambda: fit_transforms(self.spec, self.fit, keys=keys, sliced=sliced)
        )
        fitted = fit(loaded)
        plain = PlainItem()(fitted)
        arrays = {k: plain[k] for k in keys}
        if not sliced:
            return [{**arrays, "case": index, "slice": -1}]
        depth = arrays[IMAGE].shape[-1]
        return [
            {**{k: v[..., z].contiguous() for k, v in arrays.items()}, "case": index, "slice": z}
            for z in range(depth)
        ]
