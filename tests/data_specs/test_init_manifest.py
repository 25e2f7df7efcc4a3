"""``fedseg data init-manifest`` on folders as institutions name them: patterns, nnU-Net, symlinks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from typer.testing import CliRunner

from data_specs.cli import app
from data_specs.manifests.manifest import load_manifest

runner = CliRunner()
COMMON = ["--site-id", "h1", "--labels", "0=background,1=vessel", "--dims", "2"]


def _picture(path: Path, seed: int, mask: bool = False) -> None:
    rng = np.random.default_rng(seed)
    organ = np.zeros((12, 16), bool)
    organ[3:8, 4:10] = True
    if mask:
        Image.fromarray((organ * 255).astype(np.uint8)).save(path)
    else:
        pic = (rng.integers(0, 30, (12, 16, 3)) + 120 * organ[..., None]).astype(np.uint8)
        Image.fromarray(pic).save(path)


def _init(folder: Path, *extra: str) -> tuple[int, str, dict]:
    out = folder / "dataset.json"
    result = runner.invoke(app, ["init-manifest", str(folder), "--out", str(out), *COMMON, *extra])
    data = json.loads(out.read_text()) if out.exists() else {}
    return result.exit_code, result.output, data


def _cases(data: dict) -> list[dict]:
    return [c for split in ("training", "validation", "test") for c in data.get(split) or []]


def test_regex_patterns_pair_tif_scans_with_gif_annotations(tmp_path: Path) -> None:
    for i in range(5):
        _picture(tmp_path / f"{i:02d}_scan.tif", i)
        _picture(tmp_path / f"{i:02d}_annotation.gif", i, mask=True)
    _picture(tmp_path / "99_scan.tif", 9)  # no annotation: an unlabelled test scan
    code, output, data = _init(
        tmp_path,
        "--image-pattern",
        r"(?P<case>\d+)_scan\.tif",
        "--label-pattern",
        r"(?P<case>\d+)_annotation\.gif",
        "--modality",
        "R,G,B",
        "--binarize",
    )
    assert code == 0, output
    pairs = {c["image"]: c.get("label") for c in _cases(data)}
    assert pairs["03_scan.tif"] == "03_annotation.gif"
    assert pairs["99_scan.tif"] is None and len(pairs) == 6
    assert data["binarize"] is True and data["modality"] == {"0": "R", "1": "G", "2": "B"}
    result = runner.invoke(app, ["validate", str(tmp_path / "dataset.json")])
    assert result.exit_code == 0, result.output


def test_a_label_suffix_with_its_own_extension_pairs_jpg_with_png(tmp_path: Path) -> None:
    for i in range(4):
        _picture(tmp_path / f"img{i}.jpg", i)
        _picture(tmp_path / f"img{i}_mask.png", i, mask=True)
    code, output, data = _init(
        tmp_path,
        "--image-glob",
        "*.jpg",
        "--label-suffix",
        "_mask.png",
        "--modality",
        "R,G,B",
        "--label-map",
        "255=1",
    )
    assert code == 0, output
    assert {c["image"]: c["label"] for c in _cases(data)}["img2.jpg"] == "img2_mask.png"
    assert data["label_map"] == {"255": 1}
    assert runner.invoke(app, ["validate", str(tmp_path / "dataset.json")]).exit_code == 0


def test_nnunet_channel_files_become_one_case(tmp_path: Path) -> None:
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "imagesTs").mkdir()
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    for i in range(4):
        for c in range(2):
            vol = np.random.default_rng(i * 2 + c).normal(size=(8, 8, 3)).astype(np.float32)
            nib.save(
                nib.Nifti1Image(vol, affine), tmp_path / "imagesTr" / f"b_{i:03d}_000{c}.nii.gz"
            )
        nib.save(
            nib.Nifti1Image(np.zeros((8, 8, 3), np.uint8), affine),
            tmp_path / "labelsTr" / f"b_{i:03d}.nii.gz",
        )
    for c in range(2):
        nib.save(
            nib.Nifti1Image(np.zeros((8, 8, 3), np.float32), affine),
            tmp_path / "imagesTs" / f"t_000_000{c}.nii.gz",
        )
    code, output, data = _init(tmp_path, "--nnunet", "--modality", "FLAIR,T1c")
    assert code == 0, output
    cases = _cases(data)
    assert len(cases) == 5
    first = next(c for c in cases if c["image"][0].endswith("b_001_0000.nii.gz"))
    assert first["image"] == ["imagesTr/b_001_0000.nii.gz", "imagesTr/b_001_0001.nii.gz"]
    assert first["label"] == "labelsTr/b_001.nii.gz"
    assert data["modality"] == {"0": "FLAIR", "1": "T1c"}
    manifest = load_manifest(tmp_path / "dataset.json")
    assert manifest.num_channels == 2
    result = runner.invoke(app, ["validate", str(tmp_path / "dataset.json")])
    assert "ok" in result.output.lower(), result.output


def test_symlinks_inside_the_root_are_kept_and_outside_refused(tmp_path: Path) -> None:
    root = tmp_path / "site"
    store, links = root / "store", root / "links"
    store.mkdir(parents=True)
    links.mkdir()
    for i in range(4):
        _picture(store / f"s{i}.png", i)
        _picture(store / f"s{i}_gt.png", i, mask=True)
        os.symlink(store / f"s{i}.png", links / f"case{i}.png")
        os.symlink(store / f"s{i}_gt.png", links / f"case{i}_gt.png")
    out = root / "dataset.json"
    args = ["init-manifest", str(links), "--out", str(out), *COMMON, "--modality", "R,G,B"]
    result = runner.invoke(app, [*args, "--image-glob", "*.png", "--label-map", "255=1"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert all(c["image"].startswith("links/case") for c in _cases(data))  # names, not targets
    assert runner.invoke(app, ["validate", str(out)]).exit_code == 0

    outside = tmp_path / "elsewhere.png"
    _picture(outside, 7)
    os.symlink(outside, links / "case9.png")
    os.symlink(store / "s0_gt.png", links / "case9_gt.png")
    result = runner.invoke(app, [*args, "--image-glob", "*.png", "--overwrite"])
    assert result.exit_code == 1 and "symlink targets" in result.output
