"""The built images: sizes, user, what is (not) inside them, and a cached rebuild."""

from __future__ import annotations

import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from data_specs.task_spec import TaskSpec, build_unet
from data_specs.weights.bundle import BundleMeta, encode_bundle
from site_agent.clinic.models import save_global
from site_agent.federation.workdir import WorkDir
from tests.containers.conftest import build_argv
from tests.containers.docker_cli import AGGREGATOR_IMAGE, REPO, SITE_IMAGE, TAG, inspect, run
from tests.site_agent.scan_kinds import (
    block_picture,
    block_volume,
    save_picture,
    write_dicom_series,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
MB = 1_000_000
AGGREGATOR_BUDGET_MB = 350  # the goal, met
# The goal, met: 905 MB measured (BuildKit, 2026-11-30; 1252 MB before the site image
# dropped SimpleITK, the server/database stack and matplotlib). venv 774 MB: torch 435 MB
# (libtorch_cpu.so 345 MB stripped), scipy 101 MB, sympy 33 MB (torch imports it); base 124 MB.
SITE_BUDGET_MB = 1000


def report(line: str) -> None:
    """Figures of the tier, printed and appended to $FEDSEG_CONTAINER_REPORT when set."""
    print(line)
    if path := os.environ.get("FEDSEG_CONTAINER_REPORT"):
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def test_images_are_lean_and_run_as_10001(images: dict[str, float]) -> None:
    agg, site = inspect("image", AGGREGATOR_IMAGE), inspect("image", SITE_IMAGE)
    report(
        f"build (images.sh, both targets): {images['build_s']:.0f} s; "
        f"aggregator {agg['Size'] / MB:.0f} MB, site agent {site['Size'] / MB:.0f} MB"
    )
    assert agg["Size"] <= AGGREGATOR_BUDGET_MB * MB
    assert site["Size"] <= SITE_BUDGET_MB * MB
    for image in (agg, site):
        assert image["Config"]["User"] == "10001:10001"
        assert "/work" in image["Config"]["Volumes"]
        assert image["Config"]["Healthcheck"]["Test"][:4] == [
            "CMD",
            "python",
            "-m",
            "deploy.entrypoints.healthcheck",
        ]


def test_the_aggregator_image_has_no_torch_and_the_site_image_no_build_tools(
    images: dict[str, float],
) -> None:
    probe = "import importlib.util as u; print([m for m in ('torch', 'monai') if u.find_spec(m)])"
    out = run(["docker", "run", "--rm", "--entrypoint", "python", AGGREGATOR_IMAGE, "-c", probe])
    assert out.stdout.strip() == "[]"
    out = run(["docker", "run", "--rm", "--entrypoint", "python", SITE_IMAGE, "-c", probe])
    assert out.stdout.strip() == "['torch', 'monai']"
    version = "import torch; print(torch.__version__)"
    out = run(["docker", "run", "--rm", "--entrypoint", "python", SITE_IMAGE, "-c", version])
    assert out.stdout.strip().endswith("+cpu"), out.stdout
    tools = "for t in gcc cc c++ make ld; do command -v $t; done; true"
    for image in (AGGREGATOR_IMAGE, SITE_IMAGE):
        out = run(["docker", "run", "--rm", "--entrypoint", "sh", image, "-c", tools])
        assert out.stdout.strip() == "", f"{image} holds build tools: {out.stdout}"


def test_extra_ca_is_in_the_images_trust_store(images: dict[str, float]) -> None:
    ours = sorted((REPO / "deploy" / "extra-ca").glob("*.crt"))
    if not ours:
        pytest.skip("no extra CA was given to this build (FEDSEG_BUILD_CA)")
    first = ours[0].read_text().strip().splitlines()[1]  # a line of the base64 body
    for image in (AGGREGATOR_IMAGE, SITE_IMAGE):
        bundle = run(
            [
                "docker",
                "run",
                "--rm",
                "--entrypoint",
                "cat",
                image,
                "/etc/ssl/certs/ca-certificates.crt",
            ]
        ).stdout
        assert first in bundle, f"{image}: the extra CA is not in the system store"


def test_a_rebuild_with_nothing_changed_is_cached(images: dict[str, float]) -> None:
    t0 = time.monotonic()
    out = run(build_argv(), timeout_s=600, env={"FEDSEG_TAG": TAG})
    cached_s = time.monotonic() - t0
    report(f"rebuild of both images with nothing changed: {cached_s:.0f} s")
    assert "Collecting" not in out.stdout + out.stderr, "pip ran again: layers were not reused"
    assert cached_s < 420  # context upload and layer checks only (slow on a loaded host)


def _model_in(work: Path, spec: TaskSpec, class_names: tuple[str, ...] = ()) -> Path:
    torch.manual_seed(0)
    tensors = {k: v.numpy() for k, v in build_unet(spec).state_dict().items()}
    meta = BundleMeta(spec_hash=spec.spec_hash(), round=1, class_names=class_names)
    save_global(WorkDir(work), "exp-1", 1, spec, encode_bundle(tensors, meta))
    return work


def test_the_site_image_segments_nifti_dicom_and_pictures(
    images: dict[str, float], tmp_path: Path
) -> None:
    # Inside the lean site image (no SimpleITK, no server stack, no matplotlib): `fedseg site
    # infer` on a DICOM series (DICOM SEG + picture out), a NIfTI volume and a picture; the
    # masks are read back here. Also the compressed DICOM decoders pydicom needs.
    spec3 = TaskSpec(spatial_dims=3, channels=(4, 8), strides=(2,), patch_size=(16, 16, 16))
    spec2 = TaskSpec(channels=(4, 8), strides=(2,), patch_size=(16, 16), out_channels=2)
    _model_in(tmp_path / "work3d", spec3, class_names=("background", "tumour"))
    _model_in(tmp_path / "work2d", spec2)
    series = write_dicom_series(block_volume((16, 18, 6)), tmp_path / "series")
    affine = np.diag([0.8, 0.9, 2.0, 1.0])
    nib.save(nib.Nifti1Image(block_volume((16, 18, 6)), affine), tmp_path / "vol.nii.gz")
    save_picture(block_picture(), tmp_path / "pic.png")
    (tmp_path / "out").mkdir()
    for path in tmp_path.rglob("*"):
        path.chmod(0o777 if path.is_dir() else 0o666)
    tmp_path.chmod(0o777)
    docker = ["docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL"]
    # A clinician's run without the site's manifest: the image's FEDSEG_SITE_MANIFEST is unset.
    docker += ["-v", f"{tmp_path}:/s", "--entrypoint", "env", SITE_IMAGE]
    docker += ["-u", "FEDSEG_SITE_MANIFEST", "fedseg", "site", "infer"]
    jobs = [
        [
            "/s/series",
            "-o",
            "/s/out/seg.dcm",
            "--png",
            "/s/out/series.png",
            "--work-dir",
            "/s/work3d",
        ],
        ["/s/vol.nii.gz", "-o", "/s/out/vol_mask.nii.gz", "--work-dir", "/s/work3d"],
        ["/s/pic.png", "-o", "/s/out/pic_mask.png", "--work-dir", "/s/work2d"],
    ]
    for job in jobs:
        run([*docker, *job], timeout_s=300)
    seg = pydicom.dcmread(tmp_path / "out" / "seg.dcm")
    assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentLabel == "tumour"
    source = pydicom.dcmread(next(series.iterdir()))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert (tmp_path / "out" / "series.png").stat().st_size > 0
    mask = nib.load(tmp_path / "out" / "vol_mask.nii.gz")
    assert mask.shape == (16, 18, 6) and np.allclose(mask.affine, affine)
    assert Image.open(tmp_path / "out" / "pic_mask.png").size == (40, 24)
    probe = (
        "import importlib.util as u;"
        "print([m for m in ('SimpleITK', 'sqlalchemy', 'psycopg', 'uvicorn', 'matplotlib')"
        " if u.find_spec(m)]);"
        "from pydicom.data import get_testdata_file as f;"
        "from data_specs.imaging.imageio import read_image;"
        "names = ('MR_small_jpeg_ls_lossless.dcm', 'MR_small_jp2klossless.dcm',"
        " 'SC_rgb_jpeg_gdcm.dcm', 'JPGExtended.dcm', 'MR_small_RLE.dcm');"
        "print([read_image(f(n)).spatial_shape for n in names])"
    )
    out = run(["docker", "run", "--rm", "--entrypoint", "python", SITE_IMAGE, "-c", probe])
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "[]", f"the site image holds what it never imports: {lines[0]}"
    assert lines[1] == str([(64, 64, 1), (64, 64, 1), (100, 100, 1), (256, 1024, 1), (64, 64, 1)])
