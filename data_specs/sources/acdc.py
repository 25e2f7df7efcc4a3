"""Manifests for scans that already sit in a folder: the ACDC federation and any hospital's folder.

ACDC (cardiac cine MRI, 100 patients) becomes five hospitals, one per diagnosis group listed in
``frames.csv``, split by patient so both frames of a patient stay in one split. The manifests
point into the (read-only) ACDC folder through ``data_root``; nothing is copied or linked.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping
from pathlib import Path

from data_specs.constants import SplitName
from data_specs.errors import ManifestError
from data_specs.manifests.manifest import (
    CaseEntry,
    DatasetManifest,
    assign_splits,
    parse_manifest,
    save_manifest,
)
from data_specs.sources.folder_pairing import pair_by_patterns, pair_by_suffix

ACDC_LABELS = {"0": "background", "1": "RV", "2": "MYO", "3": "LV"}
ACDC_GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")


def read_frames(acdc_dir: Path) -> list[tuple[str, str, str]]:
    """Rows ``(frame, patient, group)`` of ``frames.csv``.

    Raises:
        ManifestError: the file is missing or lacks the ``frame,patient,group`` columns.
    """
    path = acdc_dir / "frames.csv"
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise ManifestError(f"{path}: expected the ACDC frames.csv, found none") from exc
    try:
        return [(r["frame"], r["patient"], r["group"]) for r in rows]
    except KeyError as exc:
        raise ManifestError(
            f"{path}: expected columns frame,patient,group, found {list(rows[0]) if rows else []}"
        ) from exc


def acdc_manifests(
    acdc_dir: str | Path,
    *,
    val_frac: float = 0.2,
    test_frac: float = 0.2,
    seed: int = 0,
    spatial_dims: int = 2,
    assignment: Mapping[str, SplitName] | None = None,
) -> list[DatasetManifest]:
    """One manifest per ACDC diagnosis group, split by patient.

    Args:
        acdc_dir: folder with ``frames.csv`` and ``patientNNN_frameMM[_gt].nii.gz``.
            Example: ``"../shared/data/acdc"``.
        val_frac: fraction of patients for validation. Default 0.2.
        test_frac: fraction of patients for test. Default 0.2.
        seed: split seed. Default 0.
        spatial_dims: the task's dims (2: slice by slice). Default 2.
        assignment: each patient's split, instead of the seeded fractions (a patient left out
            is not used). Default None.

    Returns:
        Manifests with ``site_id`` ``acdc_<group>`` and ``data_root`` the ACDC folder.

    Raises:
        ManifestError: ``frames.csv`` is missing or malformed, or a listed frame has no file.
    """
    root = Path(acdc_dir).resolve()
    rows = read_frames(root)
    missing = [
        name
        for frame, _, _ in rows
        for name in (f"{frame}.nii.gz", f"{frame}_gt.nii.gz")
        if not (root / name).is_file()
    ]
    if missing:
        raise ManifestError(
            f"{root}: expected every frame of frames.csv with its _gt label, "
            f"found {len(missing)} missing, e.g. {missing[:3]}"
        )
    manifests = []
    for group in sorted({g for _, _, g in rows}):
        frames = [(f, p) for f, p, g in rows if g == group]
        if assignment is None:
            splits = assign_splits(
                [p for _, p in frames], val_frac=val_frac, test_frac=test_frac, seed=seed
            )
        else:
            splits = {
                name: [i for i, (_, p) in enumerate(frames) if assignment.get(p) == name]
                for name in SplitName
            }
        entries = [CaseEntry(image=f"{f}.nii.gz", label=f"{f}_gt.nii.gz") for f, _ in frames]
        manifests.append(
            DatasetManifest(
                name=f"ACDC-{group}",
                description=f"ACDC cine MRI, diagnosis group {group}, split by patient",
                site_id=f"acdc_{group.lower()}",
                spatial_dims=spatial_dims,  # type: ignore[arg-type]
                modality={"0": "MRI"},
                labels=dict(ACDC_LABELS),
                data_root=str(root),
                training=[entries[i] for i in splits[SplitName.TRAINING]],
                validation=[entries[i] for i in splits[SplitName.VALIDATION]] or None,
                test=[entries[i] for i in splits[SplitName.TEST]] or None,
            )
        )
    return manifests


def write_manifests(manifests: list[DatasetManifest], out: str | Path) -> list[Path]:
    """Save each manifest as ``out/<site_id>/dataset.json``; returns the paths."""
    paths = []
    for m in manifests:
        folder = Path(out) / m.site_id
        folder.mkdir(parents=True, exist_ok=True)
        save_manifest(m, folder / "dataset.json")
        paths.append(folder / "dataset.json")
    return paths


def folder_manifest(
    data_dir: str | Path,
    *,
    out: str | Path,
    site_id: str,
    labels: dict[str, str],
    spatial_dims: int,
    image_glob: str = "*.nii.gz",
    label_suffix: str = "_gt",
    label_dir: str | Path | None = None,
    name: str | None = None,
    modality: str = "MRI",
    val_frac: float = 0.2,
    test_frac: float = 0.2,
    seed: int = 0,
    group_pattern: str | None = None,
    image_pattern: str | None = None,
    label_pattern: str | None = None,
) -> DatasetManifest:
    """A manifest for a hospital's folder of scans (``fedseg data init-manifest``).

    Images are the files (or DICOM folders) matching ``image_glob``; the label of
    ``x.nii.gz`` is ``x<label_suffix>.nii.gz`` beside it or in ``label_dir`` (a suffix with
    its own extension, ``_mask.png``, pairs ``x.jpg`` with ``x_mask.png``). Or, with
    ``image_pattern`` and ``label_pattern``, regexes sharing a capture group pair them
    (``data_specs.sources.folder_pairing``; a ``channel`` group gathers channel files). Labelled scans
    are split training / validation / test; scans without a label go to ``test`` unlabelled.
    Paths are relative to the manifest's folder when ``data_dir`` lies inside it, else to
    ``data_root = data_dir``; symlinks keep their own names and must point inside that root.

    Args:
        data_dir: the scans. Example: ``"/mnt/pacs/export"``.
        out: where the manifest will be written. Example: ``"dataset.json"``.
        site_id: the hospital's id. Example: ``"hospital_a"``.
        labels: class names by value. Example: ``{"0": "background", "1": "tumour"}``.
        spatial_dims: 2 or 3.
        image_glob: pattern under ``data_dir`` (``**`` recurses). Default ``"*.nii.gz"``.
        label_suffix: added to an image's name stem for its label. Default ``"_gt"``.
        label_dir: folder of the labels. Default None (beside the images).
        name: dataset name. Default None (the folder's name).
        modality: channel names, comma separated (``"FLAIR,T1c"``); one name for several
            channel files numbers them. Default ``"MRI"``.
        val_frac: fraction for validation. Default 0.2.
        test_frac: fraction for test. Default 0.2.
        seed: split seed. Default 0.
        group_pattern: regex whose first match in a file name groups scans of one patient
            into one split. Example: ``"patient\\d+"``. Default None (each scan alone).
        image_pattern: regex over image paths relative to ``data_dir``. Default None.
            Example: ``"(?P<case>.+)_scan\\.tif"``.
        label_pattern: regex over label paths relative to ``label_dir`` (or ``data_dir``),
            capturing the same case key. Example: ``"(?P<case>.+)_annotation\\.gif"``.

    Raises:
        ManifestError: no folder, no labelled scan, or an invalid pattern.
    """
    data = Path(data_dir).resolve()
    if not data.is_dir():
        raise ManifestError(f"{data_dir}: expected a folder of scans, found none")
    folder = Path(out).absolute().parent.resolve()
    root = folder if data.is_relative_to(folder) else data
    labels_at = Path(label_dir).resolve() if label_dir is not None else None
    try:
        grouper = re.compile(group_pattern) if group_pattern else None
    except re.error as exc:
        raise ManifestError(
            f"expected a valid group_pattern regex, found {group_pattern!r}"
        ) from exc
    if (image_pattern is None) != (label_pattern is None):
        raise ManifestError("expected both image_pattern and label_pattern, found only one")
    if image_pattern is not None and label_pattern is not None:
        found = pair_by_patterns(data, image_pattern, label_pattern, labels_at)
        how = f"image pattern {image_pattern!r} and label pattern {label_pattern!r}"
    else:
        found = pair_by_suffix(data, image_glob, label_suffix, labels_at)
        how = f"{image_glob!r} with labels named '<name>{label_suffix}<ext>'"
    labelled = [(c.images, c.label) for c in found if c.label is not None]
    unlabelled = [c.images for c in found if c.label is None]
    if not labelled:
        raise ManifestError(
            f"{data}: expected scans matching {how}, found {len(unlabelled)} scans and no labels"
        )
    for images, label in labelled:
        for path in (*images, label):
            if not path.resolve().is_relative_to(root):
                raise ManifestError(
                    f"{path}: expected files (and symlink targets) inside {root}; "
                    "set label_dir inside it"
                )
    names = [n.strip() for n in modality.split(",") if n.strip()] or ["MRI"]
    n_channels = len(labelled[0][0])
    if any(len(i) != n_channels for i, _ in labelled) or any(
        len(u) != n_channels for u in unlabelled
    ):
        raise ManifestError(f"{data}: expected every case to have {n_channels} channel file(s)")
    if len(names) == 1 and n_channels > 1:
        names = [f"{names[0]}_{i}" for i in range(n_channels)]
    if n_channels > 1 and len(names) != n_channels:
        raise ManifestError(
            f"expected {n_channels} channel name(s) in modality for {n_channels} channel "
            f"file(s) per case, found {names}"
        )

    def rel(p: Path) -> str:
        # the path as named (a symlink stays a symlink), not its target
        return Path(os.path.abspath(p)).relative_to(root).as_posix()

    def image(paths: tuple[Path, ...]) -> str | list[str]:
        return rel(paths[0]) if len(paths) == 1 else [rel(p) for p in paths]

    def group(paths: tuple[Path, ...]) -> str:
        match = grouper.search(paths[0].name) if grouper else None
        return match.group(0) if match else paths[0].name

    splits = assign_splits(
        [group(i) for i, _ in labelled], val_frac=val_frac, test_frac=test_frac, seed=seed
    )
    entries = [CaseEntry(image=image(i), label=rel(lb)) for i, lb in labelled]
    test = [entries[i] for i in splits[SplitName.TEST]] + [
        CaseEntry(image=image(u)) for u in unlabelled
    ]
    fields = {
        "name": name or data.name,
        "site_id": site_id,
        "spatial_dims": spatial_dims,
        "modality": {str(i): n for i, n in enumerate(names)},
        "labels": labels,
        "data_root": None if root == folder else str(root),
        "training": [entries[i] for i in splits[SplitName.TRAINING]],
        "validation": [entries[i] for i in splits[SplitName.VALIDATION]] or None,
        "test": test or None,
    }
    return parse_manifest(fields, where=f"manifest for {data}").bind(folder)
