"""The dataset manifest: a Medical Segmentation Decathlon ``dataset.json`` plus what a site needs."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from data_specs.constants import SplitName
from data_specs.errors import ManifestError, describe_validation_error
from data_specs.files import atomic_write_text
from data_specs.imaging.label_mapping import LabelMapping

# Informational Decathlon keys: accepted so an MSD dataset.json loads, not kept on save.
_MSD_INFO_KEYS = frozenset(
    {"reference", "licence", "license", "release", "tensorImageSize", "numTraining", "numTest"}
)
_NonEmpty = Annotated[str, Field(min_length=1, max_length=4096)]


class CaseEntry(BaseModel):
    """One scan of a split, with paths relative to the manifest's folder (or ``data_root``).

    Args:
        image: image path. Example: ``"imagesTr/case_000.nii.gz"``; a DICOM series is a folder.
            A scan stored as one file per channel (sequence) lists them in channel order:
            ``["case_0000.nii.gz", "case_0001.nii.gz"]``; they must share their geometry.
        label: label path, optional in ``test`` (an unlabelled scan). Default None.
            Example: ``"labelsTr/case_000.nii.gz"``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: _NonEmpty | Annotated[list[_NonEmpty], Field(min_length=1, max_length=64)]
    label: _NonEmpty | None = None

    @property
    def image_files(self) -> list[str]:
        """The image file(s) in channel order. Example: ``["imagesTr/case_000.nii.gz"]``."""
        return [self.image] if isinstance(self.image, str) else list(self.image)


@dataclass(frozen=True)
class ResolvedCase:
    """Absolute paths of a case, checked to stay inside the manifest's root.

    Args:
        image: the (first) image file.
        label: the label file, if any.
        channels: every image file in channel order (``(image,)`` for a single file).
    """

    image: Path
    label: Path | None
    channels: tuple[Path, ...] = ()

    @property
    def image_source(self) -> str | list[str]:
        """What a MONAI ``LoadImage`` takes: one path, or the channel files to stack."""
        if len(self.channels) > 1:
            return [str(p) for p in self.channels]
        return str(self.image)


class DatasetManifest(BaseModel):
    """A site's dataset: Decathlon fields plus ``site_id``, ``spatial_dims`` and geometry hints.

    Args:
        name: dataset name. Example: ``"ACDC-DCM"``.
        description: free text. Default ``""``.
        site_id: the hospital's id. Example: ``"site_1"``.
        spatial_dims: 2 or 3, the task's network dimensions (3D volumes feed a 2D task slice
            by slice). Example: ``2``.
        modality: channel names by index, Decathlon style (``channel_names`` is accepted too).
            Example: ``{"0": "MRI"}``.
        labels: class names by value, contiguous from 0. Example: ``{"0": "background", "1": "RV"}``.
        target_spacing: resample to this voxel spacing (one entry per spatial dim; for a 2D task
            on volumes, the in-plane spacing). Default None (keep the scan's spacing).
        data_root: absolute folder the paths are relative to, for a hospital whose scans live on
            a read-only mount elsewhere; paths (and the targets of symlinks) must stay inside it.
            Default None (the manifest's own folder). Example: ``"/mnt/pacs/export"``.
        label_map: stored label value -> class index, applied whenever a label is read (never
            written back). Example: ``{"255": 1}``; inverted masks ``{"0": 1, "255": 0}``.
            Default None.
        binarize: every non-zero stored value (after ``label_map``) is class 1. Default False.
        training: labelled training cases; may be empty (or left out) only for an outside
            site, whose manifest lists unlabelled scans in ``adaptation`` or ``test``.
            Default empty.
        validation: labelled validation cases. Default None (not declared).
        test: test cases, label optional. Default None (not declared).
        adaptation: unlabelled scans an outside site adapts on (``fedseg site adapt``), bare
            image paths or ``{"image": ...}``; never trained on. Default None (not declared).
            Example: ``["scans/a.nii.gz", "scans/b.nii.gz"]``.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: _NonEmpty
    description: str = ""
    site_id: Annotated[str, Field(min_length=1, max_length=128)]
    spatial_dims: Literal[2, 3]
    modality: dict[str, str] = Field(validation_alias=AliasChoices("modality", "channel_names"))
    labels: dict[str, str]
    target_spacing: tuple[Annotated[float, Field(gt=0)], ...] | None = None
    data_root: str | None = None
    label_map: dict[str, Annotated[int, Field(ge=0)]] | None = None
    binarize: bool = False
    training: list[CaseEntry] = Field(default_factory=list)
    validation: list[CaseEntry] | None = None
    test: list[CaseEntry] | None = None
    adaptation: list[CaseEntry] | None = None

    _folder: Path | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _drop_msd_info(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in _MSD_INFO_KEYS}
            # Decathlon test lists (and adaptation lists) are bare image paths.
            for key in ("test", "adaptation"):
                if isinstance(data.get(key), list):
                    data[key] = [{"image": e} if isinstance(e, str) else e for e in data[key]]
        return data

    @field_validator("modality")
    @classmethod
    def _check_modality(cls, value: dict[str, str]) -> dict[str, str]:
        expected = [str(i) for i in range(len(value))]
        if not value or sorted(value, key=_int_or_inf) != expected:
            raise ValueError(f"expected channel keys {expected or ['0']}, found {list(value)}")
        return {k: value[k] for k in expected}

    @field_validator("labels", mode="before")
    @classmethod
    def _check_labels(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        # nnU-Net v2 writes {"background": 0, ...}; turn it into the Decathlon direction.
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
            value = {str(v): k for k, v in value.items()}
        expected = [str(i) for i in range(len(value))]
        if len(value) < 2 or sorted(value, key=_int_or_inf) != expected:
            raise ValueError(
                f"expected label values 0..n-1 with n >= 2 (background and one class), "
                f"found keys {list(value)}"
            )
        return {k: value[k] for k in expected}

    @field_validator("data_root")
    @classmethod
    def _check_data_root(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_absolute():
            raise ValueError(f"data_root must be an absolute folder, found {value!r}")
        return value

    @field_validator("label_map")
    @classmethod
    def _check_label_map(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is not None:
            bad = [k for k in value if not k.strip().lstrip("-").isdigit()]
            if bad:
                raise ValueError(f"expected integer stored values as keys, found {bad[:3]}")
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> DatasetManifest:
        if self.label_map and max(self.label_map.values()) >= len(self.labels):
            raise ValueError(
                f"label_map targets must be declared classes 0..{len(self.labels) - 1}, "
                f"found {sorted(set(self.label_map.values()))}"
            )
        if self.target_spacing is not None and len(self.target_spacing) != self.spatial_dims:
            raise ValueError(
                f"target_spacing needs {self.spatial_dims} entries for spatial_dims="
                f"{self.spatial_dims}, found {len(self.target_spacing)}"
            )
        for split in (SplitName.TRAINING, SplitName.VALIDATION):
            unlabelled = [c.image_files[0] for c in self.iter_cases(split) if c.label is None]
            if unlabelled:
                raise ValueError(f"every {split} case needs a label; missing for {unlabelled[:3]}")
        labelled = [c.image for c in self.adaptation or [] if c.label is not None]
        if labelled:
            raise ValueError(
                f"adaptation cases are unlabelled scans; found labels for {labelled[:3]} "
                "(list labelled cases under test)"
            )
        return self

    @property
    def is_outside_site(self) -> bool:
        """No training cases, but scans to adapt on (``adaptation`` or ``test``)."""
        return not self.training and bool(self.adaptation or self.test)

    def adaptation_cases(self) -> list[CaseEntry]:
        """The scans ``fedseg site adapt`` reads, images only: ``adaptation`` if declared,
        else ``test``, else ``training``."""
        for cases in (self.adaptation, self.test, self.training):
            if cases:
                return [CaseEntry(image=c.image) for c in cases]
        return []

    @property
    def channel_names(self) -> list[str]:
        """Channel names in channel order. Example: ``["MRI"]``."""
        return list(self.modality.values())

    @property
    def num_channels(self) -> int:
        """Number of image channels."""
        return len(self.modality)

    @property
    def num_classes(self) -> int:
        """Number of classes including background (the network's ``out_channels``)."""
        return len(self.labels)

    @property
    def label_mapping(self) -> LabelMapping | None:
        """The ``label_map`` / ``binarize`` reading rule, or None when labels are stored as classes."""
        return LabelMapping.from_manifest(self.label_map, self.binarize)

    @property
    def label_values(self) -> list[int]:
        """Declared label values, ``[0, 1, ..., num_classes - 1]``."""
        return [int(k) for k in self.labels]

    @property
    def folder(self) -> Path | None:
        """Folder of the manifest file once loaded or saved; None for one built in memory."""
        return self._folder

    @property
    def root(self) -> Path:
        """The folder every case path must stay inside: ``data_root`` or the manifest's folder."""
        if self.data_root is not None:
            return Path(self.data_root)
        if self._folder is None:
            raise ManifestError(
                f"manifest {self.name!r} has no folder yet: expected it loaded or saved, "
                "or data_root set, found neither"
            )
        return self._folder

    def bind(self, folder: str | Path) -> DatasetManifest:
        """Tell a manifest built in memory which folder its relative paths start from.

        Args:
            folder: the folder that holds (or will hold) ``dataset.json``. Example: ``tmp_path``.

        Returns:
            ``self``, for chaining.
        """
        self._folder = Path(folder).absolute()
        return self

    def declared_splits(self) -> list[SplitName]:
        """Splits the manifest declares (training always; validation and test if present)."""
        return [s for s in SplitName if getattr(self, s.value) is not None]

    def iter_cases(self, split: SplitName | str) -> Iterator[CaseEntry]:
        """Cases of one split, in manifest order; nothing for an undeclared split.

        Args:
            split: ``training``, ``validation`` or ``test``. Example: ``SplitName.TRAINING``.
        """
        yield from getattr(self, SplitName(split).value) or []

    def resolve_path(self, relative: str) -> Path:
        """Absolute path of one manifest entry, refusing any that escapes ``root``.

        Args:
            relative: a path as written in the manifest. Example: ``"imagesTr/a.nii.gz"``.

        Raises:
            ManifestError: an absolute path, a ``..`` component, or a symlink resolving outside.
        """
        where = f"manifest {self._folder / 'dataset.json' if self._folder else self.name}"
        pure = PurePosixPath(relative.replace("\\", "/"))
        if pure.is_absolute() or PureWindowsPath(relative).drive:
            raise ManifestError(
                f"{where}: expected a path relative to {self.root}, found absolute path {relative!r}"
            )
        if ".." in pure.parts:
            raise ManifestError(
                f"{where}: expected a path inside {self.root}, found '..' in {relative!r}"
            )
        root = self.root.resolve()
        full = (root / pure).resolve()
        if not full.is_relative_to(root):
            raise ManifestError(
                f"{where}: expected {relative!r} to stay inside {root}, "
                f"found it resolves (through a symlink) to {full}"
            )
        return full

    def resolve(self, case: CaseEntry) -> ResolvedCase:
        """Absolute image and label paths of a case (see ``resolve_path``).

        Args:
            case: an entry of this manifest. Example: ``next(m.iter_cases("training"))``.
        """
        label = self.resolve_path(case.label) if case.label is not None else None
        channels = tuple(self.resolve_path(p) for p in case.image_files)
        return ResolvedCase(image=channels[0], label=label, channels=channels)


def _int_or_inf(key: str) -> float:
    return int(key) if key.isdigit() else float("inf")


def parse_manifest(data: Any, *, where: str = "manifest") -> DatasetManifest:
    """Check parsed JSON against the manifest schema.

    Args:
        data: the decoded JSON object. Example: ``json.loads(text)``.
        where: how to name the source in messages. Default ``"manifest"``.

    Raises:
        ManifestError: naming every missing field or wrong type (up to ten).
    """
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected a JSON object, found {type(data).__name__}")
    try:
        return DatasetManifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(describe_validation_error(exc, where, show_input=True)) from exc


def load_manifest(path: str | Path) -> DatasetManifest:
    """Read and check a ``dataset.json``.

    Args:
        path: the manifest file. Example: ``"site_1/dataset.json"``.

    Returns:
        The manifest, bound to the file's folder (``manifest.root``).

    Raises:
        ManifestError: missing or unreadable file, not JSON, missing fields, wrong types.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(
            f"manifest {path}: expected a readable UTF-8 JSON file, found {type(exc).__name__}"
        ) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"manifest {path}: expected JSON, found invalid JSON at line {exc.lineno} "
            f"column {exc.colno} ({exc.msg})"
        ) from exc
    return parse_manifest(data, where=f"manifest {path}").bind(path.parent)


def save_manifest(manifest: DatasetManifest, path: str | Path) -> None:
    """Write a manifest atomically as indented JSON and bind it to the file's folder.

    Args:
        manifest: the manifest. Example: ``DatasetManifest(name="x", ...)``.
        path: destination file; its folder must exist. Example: ``"site_1/dataset.json"``.
    """
    path = Path(path)
    text = json.dumps(manifest.model_dump(mode="json", exclude_none=True), indent=2) + "\n"
    atomic_write_text(path, text)
    manifest.bind(path.parent)


def assign_splits(
    groups: list[str], *, val_frac: float = 0.2, test_frac: float = 0.2, seed: int = 0
) -> dict[SplitName, list[int]]:
    """Split cases by group (a patient), so one group's cases never straddle two splits.

    With three groups or more, a split asked for (fraction above 0) gets at least one group and
    training keeps at least one.

    Args:
        groups: group of each case. Example: ``["p1", "p1", "p2", "p3"]``.
        val_frac: fraction of groups for validation. Default 0.2.
        test_frac: fraction of groups for test. Default 0.2.
        seed: shuffle seed. Default 0.

    Returns:
        Case indices per split, each in input order.

    Raises:
        ValueError: fractions outside [0, 1) or summing to 1 or more.
    """
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(
            f"expected val_frac and test_frac in [0, 1) summing below 1, "
            f"found {val_frac} and {test_frac}"
        )
    unique = sorted(set(groups))
    random.Random(seed).shuffle(unique)
    n = len(unique)
    n_test, n_val = round(n * test_frac), round(n * val_frac)
    if n >= 3:
        n_test = max(n_test, 1 if test_frac > 0 else 0)
        n_val = max(n_val, 1 if val_frac > 0 else 0)
    while n_test + n_val >= n and (n_test or n_val):
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    where = {g: SplitName.TEST for g in unique[:n_test]}
    where.update({g: SplitName.VALIDATION for g in unique[n_test : n_test + n_val]})
    out: dict[SplitName, list[int]] = {s: [] for s in SplitName}
    for i, g in enumerate(groups):
        out[where.get(g, SplitName.TRAINING)].append(i)
    return out
