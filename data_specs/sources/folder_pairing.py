"""Finding image-label pairs in a hospital's folder: by name suffix, or by regular expressions.

Two patterns share a capture group, the case key: ``(?P<case>.+)_scan\\.tif`` pairs
``17_scan.tif`` with ``17_annotation.gif`` under ``(?P<case>.+)_annotation\\.gif``. A ``channel``
group in the image pattern gathers one case's channel files in channel order (nnU-Net's
``case_0000.nii.gz, case_0001.nii.gz``). Patterns match a file's path relative to the folder
searched, in full, with ``/`` separators. Symlinks are kept as they are named; the manifest
checks that their targets stay inside its root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from data_specs.errors import ManifestError
from data_specs.imaging.imageio import NIFTI_SUFFIXES

_PICTURE_EXT = r"\.(?:nii\.gz|nii|png|tiff?|jpe?g|gif|bmp)"
NNUNET_IMAGE_PATTERN = rf"images(?:Tr|Ts)/(?P<case>.+)_(?P<channel>\d{{4}}){_PICTURE_EXT}"
NNUNET_LABEL_PATTERN = rf"labelsTr/(?P<case>.+){_PICTURE_EXT}"


@dataclass(frozen=True)
class FoundCase:
    """One scan found in a folder: its image file(s) in channel order and its label, if any."""

    images: tuple[Path, ...]
    label: Path | None


def split_name(path: Path) -> tuple[str, str]:
    """``("case_000", ".nii.gz")`` for ``case_000.nii.gz``; ``(stem, suffix)`` otherwise."""
    name = path.name
    for ext in NIFTI_SUFFIXES:
        if name.lower().endswith(ext):
            return name[: -len(ext)], name[-len(ext) :]
    return path.stem, path.suffix


def pair_by_suffix(
    data: Path, image_glob: str, label_suffix: str, labels_at: Path | None
) -> list[FoundCase]:
    """Images matching ``image_glob``; the label of ``x.ext`` is ``x<label_suffix>.ext``.

    A suffix with its own extension (``_mask.png``) replaces the image's extension, so
    ``a.jpg`` pairs with ``a_mask.png``.
    """
    own_ext = bool(split_name(Path("x" + label_suffix))[1]) and "." in label_suffix
    found = []
    for image in sorted(data.glob(image_glob)):
        stem, ext = split_name(image)
        label_name = f"{stem}{label_suffix}" if own_ext else f"{stem}{label_suffix}{ext}"
        if image.name.startswith(".") or (
            labels_at is None and (stem.endswith(label_suffix) or image.name.endswith(label_suffix))
        ):
            continue
        label = (labels_at or image.parent) / label_name
        found.append(FoundCase((image,), label if label.exists() else None))
    return found


def _compile(pattern: str, what: str) -> re.Pattern[str]:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ManifestError(f"expected a valid {what} regex, found {pattern!r} ({exc})") from exc
    if compiled.groups < 1:
        raise ManifestError(
            f"expected the {what} regex {pattern!r} to capture the case key, e.g. "
            "'(?P<case>.+)_scan\\.tif', found no group"
        )
    return compiled


def _key(match: re.Match[str]) -> str:
    return match.group("case") if "case" in match.re.groupindex else match.group(1)


def _files(folder: Path) -> list[tuple[str, Path]]:
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in rel.split("/")) or not path.is_file():
            continue
        out.append((rel, path))
    return out


def pair_by_patterns(
    data: Path, image_pattern: str, label_pattern: str, labels_at: Path | None
) -> list[FoundCase]:
    """Images and labels whose regexes capture the same case key (see the module docstring).

    Raises:
        ManifestError: an invalid regex, one without a group, or two labels for one case.
    """
    image_re = _compile(image_pattern, "image pattern")
    label_re = _compile(label_pattern, "label pattern")
    labels: dict[str, Path] = {}
    for rel, path in _files(labels_at or data):
        match = label_re.fullmatch(rel)
        if match is None:
            continue
        key = _key(match)
        if key in labels:
            raise ManifestError(
                f"label pattern {label_pattern!r} gives case {key!r} twice: "
                f"{labels[key].name} and {path.name}"
            )
        labels[key] = path
    channels: dict[str, list[tuple[int, Path]]] = {}
    for rel, path in _files(data):
        match = image_re.fullmatch(rel)
        if match is None or (labels_at is None and label_re.fullmatch(rel)):
            continue
        channel = int(match.group("channel")) if "channel" in image_re.groupindex else 0
        channels.setdefault(_key(match), []).append((channel, path))
    return [
        FoundCase(tuple(p for _, p in sorted(files)), labels.get(key))
        for key, files in sorted(channels.items())
    ]
