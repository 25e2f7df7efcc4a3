"""``fedseg site infer`` on pictures, folders, channel files and DICOM, as a clinician runs it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from data_specs.task_spec import TaskSpec, build_unet
from data_specs.weights.bundle import BundleMeta, encode_bundle
from site_agent.cli import app
from site_agent.clinic.models import save_global
from site_agent.federation.workdir import WorkDir
from tests.site_agent.scan_kinds import (
    block_picture,
    block_volume,
    save_picture,
    write_dicom_series,
)

pytestmark = pytest.mark.slow  # real training, processes or servers: `make test` only

runner = CliRunner()
SPEC = TaskSpec(channels=(4, 8), strides=(2,), patch_size=(16, 16), out_channels=2)


def model_in(work: Path, spec: TaskSpec = SPEC, class_names: tuple[str, ...] = ()) -> Path:
    torch.manual_seed(0)
    tensors = {k: v.numpy() for k, v in build_unet(spec).state_dict().items()}
    meta = BundleMeta(spec_hash=spec.spec_hash(), round=1, class_names=class_names)
    data = encode_bundle(tensors, meta)
    save_global(WorkDir(work), "exp-1", 1, spec, data)
    return work


def test_a_picture_gives_a_png_mask_of_its_size_and_a_picture(tmp_path: Path) -> None:
    work = model_in(tmp_path / "work")
    scan = save_picture(block_picture(), tmp_path / "scan.jpg")
    args = ["infer", str(scan), "-o", str(tmp_path / "m.png"), "--png", str(tmp_path / "p.png")]
    result = runner.invoke(app, [*args, "--work-dir", str(work)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("segmenting 1 scan(s)")
    with Image.open(tmp_path / "m.png") as mask, Image.open(scan) as picture:
        assert mask.size == picture.size and mask.mode == "L"
    with Image.open(tmp_path / "p.png") as overlay:
        assert overlay.size[0] >= picture.size[0]


def test_the_output_is_checked_before_the_model_is_loaded(tmp_path: Path) -> None:
    scan = save_picture(block_picture(), tmp_path / "scan.png")
    # No model in the work dir: the mask's problem must be the one reported.
    for out, message in [
        (tmp_path / "m.jpg", "expected a mask ending in"),
        (tmp_path / "missing" / "m.png", "existing folder"),
        (tmp_path / "m.dcm", "DICOM SEG"),
    ]:
        result = runner.invoke(
            app, ["infer", str(scan), "-o", str(out), "--work-dir", str(tmp_path / "w")]
        )
        assert result.exit_code == 6, result.output
        assert message in result.output and "Traceback" not in result.output


def test_the_first_line_comes_before_torch_is_imported(tmp_path: Path) -> None:
    scan = save_picture(block_picture(), tmp_path / "scan.png")
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from site_agent.clinic.segment_command import run_infer
        from site_agent.settings import SiteSettings
        def echo(line):
            print("torch" in sys.modules, "monai" in sys.modules)
            raise SystemExit(0)
        run_infer(SiteSettings(work_dir={str(tmp_path / "w")!r}), [Path({str(scan)!r})],
                  Path({str(tmp_path / "m.png")!r}), echo=echo)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False False"


def test_a_folder_of_scans_is_segmented_with_one_model_load(tmp_path: Path, monkeypatch) -> None:
    import site_agent.clinic.models

    work = model_in(tmp_path / "work")
    folder = tmp_path / "scans"
    folder.mkdir()
    for i, suffix in enumerate((".png", ".tif", ".jpg")):
        save_picture(block_picture(seed=i), folder / f"case{i}{suffix}")
    loads = []
    real = site_agent.clinic.models.load_model
    monkeypatch.setattr(
        site_agent.clinic.models, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k)
    )
    out = tmp_path / "masks"
    result = runner.invoke(
        app, ["infer", str(folder), "-o", str(out), "--png", str(out), "--work-dir", str(work)]
    )
    assert result.exit_code == 0, result.output
    assert len(loads) == 1
    assert sorted(p.name for p in out.iterdir()) == [
        "case0_mask.png",
        "case0_overlay.png",
        "case1_mask.tif",
        "case1_overlay.png",
        "case2_mask.png",
        "case2_overlay.png",
    ]
    assert "3 masks written" in result.output


def test_channel_files_make_one_scan_and_must_share_their_grid(tmp_path: Path) -> None:
    spec = TaskSpec(
        spatial_dims=3,
        in_channels=2,
        channels=(4, 8),
        strides=(2,),
        patch_size=(16, 16, 16),
        out_channels=2,
    )
    work = model_in(tmp_path / "work", spec)
    affine = np.diag([1.2, 1.2, 3.0, 1.0])
    for i in range(2):
        nib.save(nib.Nifti1Image(block_volume(seed=i), affine), tmp_path / f"c_000{i}.nii.gz")
    channels = ["--channel", str(tmp_path / "c_0000.nii.gz"), "--channel"]
    out = ["-o", str(tmp_path / "m.nii.gz"), "--work-dir", str(work)]
    result = runner.invoke(app, ["infer", *channels, str(tmp_path / "c_0001.nii.gz"), *out])
    assert result.exit_code == 0, result.output
    mask = nib.load(tmp_path / "m.nii.gz")
    assert mask.shape == (20, 24, 10)
    np.testing.assert_allclose(mask.affine, affine)

    nib.save(nib.Nifti1Image(block_volume(seed=1), np.eye(4)), tmp_path / "other.nii.gz")
    result = runner.invoke(app, ["infer", *channels, str(tmp_path / "other.nii.gz"), *out])
    assert result.exit_code == 1 and "channels share one grid" in result.output

    # nnU-Net naming in a folder: case_0000, case_0001 are one two-channel scan.
    folder = tmp_path / "nnunet"
    folder.mkdir()
    for i in range(2):
        for case in ("a", "b"):
            nib.save(
                nib.Nifti1Image(block_volume(seed=i), affine), folder / f"{case}_000{i}.nii.gz"
            )
    result = runner.invoke(
        app, ["infer", str(folder), "-o", str(tmp_path / "nn"), "--work-dir", str(work)]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "nn").iterdir()) == [
        "a_mask.nii.gz",
        "b_mask.nii.gz",
    ]


def test_a_folder_holding_two_dicom_series_is_explained(tmp_path: Path) -> None:
    work = model_in(
        tmp_path / "work",
        TaskSpec(spatial_dims=3, channels=(4, 8), strides=(2,), patch_size=(16, 16, 16)),
    )
    folder = tmp_path / "two"
    write_dicom_series(block_volume((16, 16, 4)), folder / "a", series="1.2.3.4.5.1")
    write_dicom_series(block_volume((16, 16, 4)), folder / "b", series="1.2.3.4.5.2")
    for f in (folder / "b").iterdir():
        f.rename(folder / "a" / f"b_{f.name}")
    result = runner.invoke(
        app, ["infer", str(folder / "a"), "-o", str(tmp_path / "m.nii.gz"), "--work-dir", str(work)]
    )
    assert result.exit_code == 1
    assert "expected a folder holding one DICOM series, found 2" in result.output


def test_a_dicom_series_gives_a_dicom_seg_and_a_picture(tmp_path: Path) -> None:
    import pydicom

    spec = TaskSpec(spatial_dims=3, channels=(4, 8), strides=(2,), patch_size=(16, 16, 16))
    # No manifest: the segment is named as the experiment named its classes (bundle metadata).
    work = model_in(tmp_path / "work", spec, class_names=("background", "tumour"))
    series = write_dicom_series(block_volume((16, 18, 6)), tmp_path / "series")
    args = ["infer", str(series), "-o", str(tmp_path / "seg.dcm"), "--png", str(tmp_path / "p.png")]
    result = runner.invoke(app, [*args, "--work-dir", str(work)])
    assert result.exit_code == 0, result.output
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentLabel == "tumour"
    source = pydicom.dcmread(next(series.iterdir()))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert (tmp_path / "p.png").stat().st_size > 0
