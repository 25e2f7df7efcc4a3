"""Which scans ``fedseg site infer`` segments and where each mask goes, settled before any model loads.

A command line names one scan, several, a folder of scans, or the channel files of one scan
(``--channel``). A folder holding DICOM files is one series; a folder of NIfTI files or pictures
is a batch, in which nnU-Net's ``case_0000.nii.gz, case_0001.nii.gz`` naming groups one case's
channel files. Every destination is checked here, so a wrong suffix or a missing folder is
reported before minutes of inference.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data_specs.constants import ImageFormat
from data_specs.errors import DataSpecError
from data_specs.imaging.imageio import NIFTI_SUFFIXES, PIL_SUFFIXES, detect_format
from data_specs.imaging.mask_io import MaskFormat, check_mask_destination
from site_agent.errors import ScanError, WorkDirError

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ext>\.nii\.gz|\.nii)$")
_SCAN_SUFFIXES = (*NIFTI_SUFFIXES, *PIL_SUFFIXES)


@dataclass(frozen=True)
class ScanJob:
    """One scan to segment and where its outputs go.

    Args:
        name: the scan's name without suffix (and without the channel number).
        files: the scan, or its channel files in channel order.
        format: how the scan is stored.
        mask: the mask file to write.
        mask_format: its format (from the suffix).
        picture: the overlay picture to write, if any.
    """

    name: str
    files: tuple[Path, ...]
    format: ImageFormat
    mask: Path
    mask_format: MaskFormat
    picture: Path | None = None


def plan_jobs(
    scans: Sequence[Path],
    output: Path,
    *,
    channels: Sequence[Path] = (),
    png: Path | None = None,
    mask_suffix: str | None = None,
) -> list[ScanJob]:
    """Expand the command line into scan jobs and check every destination.

    With one scan (or ``channels``), ``output`` and ``png`` are files. With several scans or a
    folder of scans, they are folders (created inside an existing parent) and each mask is
    ``<name>_mask<suffix>``, each picture ``<name>_overlay.png``.

    Args:
        scans: scan files, DICOM series folders, or folders of scans.
        output: the mask file (one scan) or folder (several).
        channels: the channel files of one scan, in order. Default none.
        png: the overlay picture file (one scan) or folder (several). Default None.
        mask_suffix: the masks' suffix in a batch. Default None: ``.nii.gz`` for volumes,
            the picture's own ``.png``/``.tif`` (else ``.png``) for pictures.

    Raises:
        ScanError: no scan, a missing file, or both scans and ``--channel``.
        WorkDirError: a destination that cannot be written.
    """
    if channels and scans:
        raise ScanError("give either scans or --channel files of one scan, not both")
    groups = [tuple(channels)] if channels else _expand(scans)
    if not groups:
        raise ScanError("expected at least one scan (a file, a DICOM folder or a folder of scans)")
    for files in groups:
        for f in files:
            if not f.exists():
                raise ScanError(f"no scan at {f}")
    batch = len(groups) > 1 or any(p.is_dir() and _is_batch_folder(p) for p in scans)
    jobs = []
    for files in groups:
        try:
            fmt = detect_format(files[0])
        except DataSpecError as exc:
            raise ScanError(str(exc)) from exc
        name = _name(files[0], several_channels=len(files) > 1)
        if batch:
            mask = _folder(output) / f"{name}_mask{mask_suffix or _default_suffix(files[0])}"
            picture = _folder(png) / f"{name}_overlay.png" if png is not None else None
        else:
            mask, picture = output, png
        try:
            mask_format = check_mask_destination(
                mask, scan_format=fmt, spatial_ndim=2 if fmt == ImageFormat.PIL else None
            )
        except DataSpecError as exc:
            raise WorkDirError(f"cannot write the mask: {exc}") from exc
        if picture is not None and not picture.parent.is_dir():
            raise WorkDirError(f"cannot write the picture {picture}: no folder {picture.parent}")
        jobs.append(ScanJob(name, tuple(files), fmt, mask, mask_format, picture))
    return jobs


def _expand(scans: Sequence[Path]) -> list[tuple[Path, ...]]:
    groups: list[tuple[Path, ...]] = []
    for scan in scans:
        if scan.is_dir() and _is_batch_folder(scan):
            groups.extend(_group_channels(sorted(_scan_files(scan))))
        else:
            groups.append((scan,))
    return groups


def _scan_files(folder: Path) -> list[Path]:
    return [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(_SCAN_SUFFIXES)
    ]


def _is_batch_folder(folder: Path) -> bool:
    """A folder of NIfTI files or pictures (a DICOM series folder holds neither)."""
    return bool(_scan_files(folder))


def _group_channels(files: list[Path]) -> list[tuple[Path, ...]]:
    """nnU-Net ``case_0000``, ``case_0001`` files become one multi-channel scan."""
    matches = [_CHANNEL_FILE.match(f.name) for f in files]
    if not files or not all(matches):
        return [(f,) for f in files]
    cases: dict[str, list[tuple[int, Path]]] = {}
    for f, m in zip(files, matches, strict=True):
        assert m is not None
        cases.setdefault(m["case"], []).append((int(m["channel"]), f))
    return [tuple(f for _, f in sorted(v)) for _, v in sorted(cases.items())]


def _name(path: Path, *, several_channels: bool) -> str:
    name = path.name
    for suffix in (*NIFTI_SUFFIXES, *PIL_SUFFIXES, ".dcm"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    match = _CHANNEL_FILE.match(path.name) if several_channels else None
    return match["case"] if match else name


def _default_suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".tif", ".tiff")):
        return ".tif"
    if name.endswith(PIL_SUFFIXES):
        return ".png"
    return ".nii.gz"


def _folder(path: Path | None) -> Path:
    assert path is not None
    if path.exists() and not path.is_dir():
        raise WorkDirError(f"{path}: several scans need a folder for their outputs, found a file")
    if not path.parent.is_dir():
        raise WorkDirError(f"{path}: expected an existing parent folder {path.parent}")
    path.mkdir(exist_ok=True)
    return path
