"""Tiny synthetic scans and manifests written to a test's tmp_path, plus where real ACDC lives."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from data_specs.imaging.imageio import write_mask_nifti, write_nifti
from data_specs.manifests.manifest import CaseEntry, DatasetManifest, save_manifest

LABELS = {"0": "background", "1": "ring", "2": "core"}


def shared_acdc() -> Path:
    """The shared ACDC folder: ``$FEDSEG_SHARED_DATA/acdc`` or ``../shared/data/acdc``."""
    env = os.environ.get("FEDSEG_SHARED_DATA")
    base = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return base / "acdc"


def disc_label(shape: tuple[int, ...], centre_shift: int = 0) -> np.ndarray:
    """Label map: a core (2) inside a ring (1), centred (plus a shift)."""
    grid = np.indices(shape).astype(float)
    centre = np.array(shape, dtype=float)[:, None] / 2 + centre_shift
    dist = np.sqrt(((grid.reshape(len(shape), -1) - centre) ** 2).sum(0)).reshape(shape)
    label = np.zeros(shape, dtype=np.uint8)
    label[dist < min(shape[:2]) * 0.35] = 1
    label[dist < min(shape[:2]) * 0.2] = 2
    return label


def write_pair(
    folder: Path,
    name: str,
    shape: tuple[int, ...] = (16, 16),
    affine: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[str, str]:
    """Write ``images/<name>.nii.gz`` and ``labels/<name>.nii.gz``; returns relative paths."""
    affine = np.diag([1.5, 1.5, 2.0, 1.0]) if affine is None else affine
    label = disc_label(shape, centre_shift=seed % 3)
    rng = np.random.default_rng(seed)
    image = (100 + 50 * label + rng.normal(0, 5, shape)).astype(np.float32)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    write_nifti(image, affine, folder / "images" / f"{name}.nii.gz")
    write_mask_nifti(label, affine, folder / "labels" / f"{name}.nii.gz")
    return f"images/{name}.nii.gz", f"labels/{name}.nii.gz"


def tiny_site(
    folder: Path,
    n_train: int = 3,
    n_val: int = 1,
    n_test: int = 1,
    shape: tuple[int, ...] = (16, 16),
    affine: np.ndarray | None = None,
) -> Path:
    """A valid site of tiny NIfTI pairs and its ``dataset.json``; returns the manifest path."""
    entries = []
    for i in range(n_train + n_val + n_test):
        image, label = write_pair(folder, f"c{i}", shape=shape, affine=affine, seed=i)
        entries.append(CaseEntry(image=image, label=label))
    manifest = DatasetManifest(
        name="tiny",
        site_id="tiny_site",
        spatial_dims=2 if len(shape) == 2 else 3,
        modality={"0": "MRI"},
        labels=dict(LABELS),
        training=entries[:n_train],
        validation=entries[n_train : n_train + n_val] or None,
        test=entries[n_train + n_val :] or None,
    )
    save_manifest(manifest, folder / "dataset.json")
    return folder / "dataset.json"


def tree_digest(folder: Path) -> str:
    """sha256 over every file's relative path and bytes (to prove nothing was modified)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()
