"""Shared fixtures of the site agent tests: a tiny task spec and tiny synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from data_specs.task_spec import TaskSpec

TINY = TaskSpec(channels=(4, 8), strides=(2,), patch_size=(32, 32), num_res_units=1)


@pytest.fixture
def tiny_spec() -> TaskSpec:
    return TINY


def square_case(rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with one bright square, and the square as label 1."""
    image = rng.normal(0.0, 0.3, (size, size)).astype(np.float32)
    label = np.zeros((size, size), dtype=np.uint8)
    x, y = rng.integers(2, size - 12, 2)
    image[x : x + 10, y : y + 10] += 2.0
    label[x : x + 10, y : y + 10] = 1
    return image, label


class SquaresDataset(torch.utils.data.Dataset):
    """In-memory ``{"image", "label"}`` items of ``square_case``."""

    def __init__(self, n: int, seed: int, size: int = 32) -> None:
        rng = np.random.default_rng(seed)
        self.items = []
        for _ in range(n):
            image, label = square_case(rng, size)
            self.items.append(
                {
                    "image": torch.from_numpy(image)[None],
                    "label": torch.from_numpy(label)[None].float(),
                }
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


def write_site(
    root: Path,
    *,
    n_train: int = 6,
    n_val: int = 2,
    n_test: int = 2,
    seed: int = 0,
    size: int = 32,
    prefix: str = "case",
    site_id: str | None = None,
) -> Path:
    """Write a 2D site of ``square_case`` NIfTI files and its ``dataset.json``; return the manifest."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    splits: dict[str, list[dict[str, str]]] = {"training": [], "validation": [], "test": []}
    affine = np.diag([0.8, 0.8, 1.0, 1.0])
    counts = {"training": n_train, "validation": n_val, "test": n_test}
    for split, n in counts.items():
        for i in range(n):
            image, label = square_case(rng, size)
            name = f"{prefix}_{split[:2]}_{i:03d}.nii.gz"
            nib.save(nib.Nifti1Image(image, affine), root / "images" / name)
            nib.save(nib.Nifti1Image(label, affine), root / "labels" / name)
            splits[split].append({"image": f"images/{name}", "label": f"labels/{name}"})
    manifest = {
        "name": "squares",
        "site_id": site_id or root.name,
        "spatial_dims": 2,
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "square"},
        **{k: v for k, v in splits.items() if v},
    }
    path = root / "dataset.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path
