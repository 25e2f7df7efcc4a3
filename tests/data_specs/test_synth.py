"""Synthetic hospitals: valid, reproducible to the byte, and different from site to site."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data_specs.errors import DataSpecError
from data_specs.manifests.manifest import load_manifest
from data_specs.manifests.validate import validate_manifest
from data_specs.sources.synth import synthesize
from tests.data_specs.tiny_data import tree_digest


def test_sites_are_valid_with_every_split_and_class(tmp_path: Path) -> None:
    paths = synthesize(tmp_path, sites=2, cases=5, dims=2, seed=0, outside=1)
    assert [p.parent.name for p in paths] == ["site_1", "site_2", "outside_1"]
    for path in paths:
        assert validate_manifest(path, workers=1).ok
        m = load_manifest(path)
        assert [len(list(m.iter_cases(s))) for s in ("training", "validation", "test")] == [3, 1, 1]
        assert m.num_classes == 4 and m.site_id == path.parent.name
    labels = [
        np.asarray(nib.load(p).dataobj)
        for p in sorted((tmp_path / "site_1" / "labelsTr").iterdir())
    ]
    assert set(np.unique(np.stack(labels)).tolist()) == {0, 1, 2, 3}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    synthesize(tmp_path / "a", sites=2, cases=3, dims=2, seed=7)
    synthesize(tmp_path / "b", sites=2, cases=3, dims=2, seed=7)
    synthesize(tmp_path / "c", sites=2, cases=3, dims=2, seed=8)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def _foreground_contrast(site: Path) -> list[float]:
    out = []
    for img_path in sorted((site / "imagesTr").iterdir()):
        img = nib.load(img_path).get_fdata()
        lab = np.asarray(nib.load(site / "labelsTr" / img_path.name).dataobj)
        out.append(img[lab == 3].mean() / max(img[lab == 0].mean(), 1e-6))
    return out


def test_each_site_has_its_own_scanner_and_geometry(tmp_path: Path) -> None:
    synthesize(tmp_path, sites=3, cases=4, dims=2, seed=1)
    scanners = [
        json.loads((tmp_path / f"site_{i}" / "scanner.json").read_text()) for i in (1, 2, 3)
    ]
    assert len({s["gamma"] for s in scanners}) == 3
    affines = [
        nib.load(tmp_path / f"site_{i}" / "imagesTr" / "case_000.nii.gz").affine for i in (1, 2, 3)
    ]
    assert not np.allclose(affines[0], np.eye(4))
    assert not np.allclose(affines[0], affines[1])
    contrasts = [np.mean(_foreground_contrast(tmp_path / f"site_{i}")) for i in (1, 2, 3)]
    assert max(contrasts) / min(contrasts) > 1.05


def test_3d_sites_write_volumes(tmp_path: Path) -> None:
    (path,) = synthesize(tmp_path, sites=1, cases=3, dims=3, size=16, classes=2, seed=0)
    m = load_manifest(path)
    img = nib.load(m.resolve(m.training[0]).image)
    assert img.shape == (16, 16, 16) and m.spatial_dims == 3 and m.num_classes == 3
    assert validate_manifest(path, workers=1).ok


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"cases": 2}, "cases >= 3"),
        ({"dims": 4}, "dims 2 or 3"),
        ({"classes": 5}, "classes in 1..3"),
        ({"size": 8}, "size in 16..512"),
        ({"sites": 0}, "sites >= 1"),
    ],
)
def test_bad_arguments_write_nothing(tmp_path: Path, kwargs: dict[str, int], expected: str) -> None:
    args = {"sites": 1, "cases": 3, "dims": 2, **kwargs}
    with pytest.raises(DataSpecError, match=expected):
        synthesize(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


def test_existing_sites_need_overwrite(tmp_path: Path) -> None:
    synthesize(tmp_path, sites=1, cases=3, dims=2)
    with pytest.raises(DataSpecError, match="overwrite"):
        synthesize(tmp_path, sites=1, cases=3, dims=2, seed=1)
    synthesize(tmp_path, sites=1, cases=3, dims=2, seed=1, overwrite=True)
    assert validate_manifest(tmp_path / "site_1" / "dataset.json", workers=1).ok
