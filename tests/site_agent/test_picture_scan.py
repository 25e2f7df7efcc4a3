"""``fedseg site infer`` on a picture skips MONAI and still gives exactly MONAI's preparation and mask."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from data_specs.constants import InputFit
from data_specs.imaging.transforms import prepare_scan
from data_specs.task_spec import TaskSpec, build_unet
from site_agent.clinic.inference import label_map, segment_scan
from site_agent.clinic.picture_scan import plain_picture_path, prepare_picture
from site_agent.training.prediction import predict_scores
from tests.site_agent.scan_kinds import block_picture, save_picture

RESIZE = TaskSpec(
    channels=(4, 8), strides=(2,), patch_size=(16, 16), out_channels=3, fit=InputFit.RESIZE
)


def _rgb(path: Path) -> Path:
    pic = np.stack([block_picture(seed=s) for s in range(3)], axis=-1)
    pic[..., 0] = 255  # a constant channel: minmax's special case
    return save_picture(pic, path)


@pytest.mark.parametrize("intensity", ["zscore", "minmax", "none"])
@pytest.mark.parametrize("fit", [InputFit.RESIZE, InputFit.PATCH])
@pytest.mark.parametrize("kind", ["grey.png", "rgb.png", "grey.jpg", "rgb.tif"])
def test_the_plain_path_equals_monais_chain(
    tmp_path: Path, intensity: str, fit: InputFit, kind: str
) -> None:
    rgb = kind.startswith("rgb")
    path = _rgb(tmp_path / kind) if rgb else save_picture(block_picture(), tmp_path / kind)
    spec = RESIZE.model_copy(
        update={"intensity": intensity, "fit": fit, "in_channels": 3 if rgb else 1}
    )
    assert plain_picture_path(path, spec, None)
    image, geometry = prepare_picture(path, spec)
    monai = prepare_scan(path, spec)
    assert geometry.spatial_shape == monai.geometry.spatial_shape == (40, 24)
    np.testing.assert_array_equal(geometry.affine, monai.geometry.affine)
    assert torch.equal(image, monai.image)  # the same statistics, the same float32 operations

    torch.manual_seed(1)
    model = build_unet(spec).eval()
    want = monai.to_scan_geometry(
        label_map(predict_scores(model, spec, monai.image, sliced=monai.sliced))
    )
    got = segment_scan(model, spec, path)
    np.testing.assert_array_equal(got.mask, want)
    assert got.mask.dtype == want.dtype


def test_what_needs_monai_takes_monais_path(tmp_path: Path) -> None:
    png = save_picture(block_picture(), tmp_path / "a.png")
    assert not plain_picture_path(png, RESIZE, (0.5, 0.5))  # resampling
    assert not plain_picture_path(png, RESIZE.model_copy(update={"spatial_dims": 3}), None)
    assert not plain_picture_path([png, png], RESIZE, None)  # channel files
    ct = RESIZE.model_copy(
        update={"intensity": "ct", "clip_range": (0.0, 200.0), "norm_mean_std": (50.0, 20.0)}
    )
    assert not plain_picture_path(png, ct, None)
    assert not plain_picture_path(tmp_path / "a.nii.gz", RESIZE, None)


@pytest.mark.timeout(660)  # a fresh interpreter importing torch: slow on a loaded machine
@pytest.mark.slow  # a subprocess, a real server or real training
def test_infer_on_a_picture_never_imports_monai(tmp_path: Path) -> None:
    from data_specs.weights.bundle import BundleMeta, encode_bundle
    from site_agent.clinic.models import save_global
    from site_agent.federation.workdir import WorkDir

    tensors = {k: v.numpy() for k, v in build_unet(RESIZE).state_dict().items()}
    data = encode_bundle(tensors, BundleMeta(spec_hash=RESIZE.spec_hash(), round=1))
    save_global(WorkDir(tmp_path / "w"), "exp-1", 1, RESIZE, data)
    scan = save_picture(block_picture(), tmp_path / "scan.png")
    script = textwrap.dedent(
        f"""
        import sys
        from typer.testing import CliRunner
        from site_agent.cli import app
        args = ["infer", {str(scan)!r}, "-o", {str(tmp_path / "m.png")!r},
                "--png", {str(tmp_path / "p.png")!r}, "--work-dir", {str(tmp_path / "w")!r}]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        print(sorted(m for m in ("monai", "matplotlib", "SimpleITK") if m in sys.modules))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "m.png").is_file() and (tmp_path / "p.png").is_file()
