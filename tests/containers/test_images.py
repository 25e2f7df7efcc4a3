"""The built images: sizes, user, what is (not) inside them, and a cached rebuild."""

from __future__ import annotations

import os
import time

import pytest

from tests.containers.conftest import build_argv
from tests.containers.docker_cli import AGGREGATOR_IMAGE, REPO, SITE_IMAGE, TAG, inspect, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
MB = 1_000_000
AGGREGATOR_BUDGET_MB = 350  # the goal, met
# The goal is 1000 MB; not met: 1252 MB measured (BuildKit, 2026-11-29). The venv is
# 1112 MB after slimming (deploy/slim_venv.sh): torch 435 MB (libtorch_cpu.so 345 MB stripped),
# SimpleITK 264 MB (DICOM via GDCM), scipy 101 MB; base 123 MB. This budget catches regressions.
SITE_BUDGET_MB = 1300


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
