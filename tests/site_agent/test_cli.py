"""The ``fedseg site`` commands as a hospital's IT and a clinician use them."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from data_specs.task_spec import build_unet
from data_specs.weights.bundle import BundleMeta, encode_bundle
from site_agent.cli import app
from site_agent.clinic.models import save_global
from site_agent.federation.workdir import WorkDir
from tests.site_agent.conftest import TINY, write_site
from tests.site_agent.federation import live_aggregator
from tests.site_agent.test_federation_e2e import TRAIN, agent_settings

runner = CliRunner()


def global_model_in(work, experiment_id: str = "exp-1") -> None:
    torch.manual_seed(0)
    tensors = {k: v.numpy() for k, v in build_unet(TINY).state_dict().items()}
    data = encode_bundle(tensors, BundleMeta(spec_hash=TINY.spec_hash(), round=1))
    save_global(WorkDir(work), experiment_id, 1, TINY, data)


@pytest.mark.slow  # a subprocess, a real server or real training
def test_python_m_site_agent_shows_the_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "site_agent", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for command in ("run", "enroll", "infer", "adapt", "evaluate"):
        assert command in out.stdout


def test_run_refuses_an_invalid_manifest_and_prints_the_report(tmp_path) -> None:
    manifest = write_site(tmp_path / "data", n_train=2, n_val=1, n_test=0)
    next((tmp_path / "data" / "labels").iterdir()).unlink()
    env = {"FEDSEG_SITE_ENROLLMENT_TOKEN": "enroll-token-123"}
    args = [
        "run",
        "--aggregator-url",
        "https://127.0.0.1:9",
        "--manifest",
        str(manifest),
        "--work-dir",
        str(tmp_path / "work"),
        "--once",
    ]
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 5, result.output
    assert "failed validation" in result.output and "labels/case_tr_000.nii.gz" in result.output
    assert not (tmp_path / "work" / "site_token").exists()


def test_run_refuses_plain_http_without_the_development_flag(tmp_path) -> None:
    result = runner.invoke(app, ["run", "--aggregator-url", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "plain http" in result.output


def test_infer_writes_the_mask_and_a_picture_and_evaluate_reports(tmp_path) -> None:
    manifest = write_site(tmp_path / "data", n_train=2, n_val=1, n_test=2)
    work = tmp_path / "work"
    global_model_in(work)
    scan = tmp_path / "data" / "images" / "case_te_000.nii.gz"
    common = ["--work-dir", str(work), "--manifest", str(manifest), "--device", "cpu"]
    args = [
        "infer",
        str(scan),
        "-o",
        str(tmp_path / "mask.nii.gz"),
        "--png",
        str(tmp_path / "m.png"),
    ]
    result = runner.invoke(app, [*args, *common])
    assert result.exit_code == 0, result.output
    mask, image = nib.load(tmp_path / "mask.nii.gz"), nib.load(scan)
    assert mask.shape == image.shape
    np.testing.assert_allclose(mask.affine, image.affine)
    with Image.open(tmp_path / "m.png") as picture:
        assert picture.format == "PNG" and picture.size[0] > 100

    result = runner.invoke(app, ["evaluate", "--json", *common])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["cases"] == 2 and set(report["dice_per_class"]) == {"square"}
    assert report["split"] == "test"


def test_infer_refuses_a_model_of_another_spec_and_a_missing_scan(tmp_path) -> None:
    work = tmp_path / "work"
    global_model_in(work)
    other = TINY.model_copy(update={"channels": (4, 16)})
    tensors = {k: v.numpy() for k, v in build_unet(other).state_dict().items()}
    weights = tmp_path / "other.safetensors"
    weights.write_bytes(encode_bundle(tensors, BundleMeta(spec_hash=other.spec_hash(), round=1)))
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.float32), np.eye(4)), scan)
    result = runner.invoke(
        app,
        [
            "infer",
            str(scan),
            "-o",
            str(tmp_path / "m.nii.gz"),
            "--work-dir",
            str(work),
            "--weights",
            str(weights),
        ],
    )
    assert result.exit_code == 1 and "task spec" in result.output
    assert not (tmp_path / "m.nii.gz").exists()
    result = runner.invoke(
        app,
        [
            "infer",
            str(tmp_path / "nope.nii.gz"),
            "-o",
            str(tmp_path / "m.nii.gz"),
            "--work-dir",
            str(work),
        ],
    )
    assert result.exit_code == 1 and "no scan at" in result.output


@pytest.mark.slow
def test_outside_site_adapts_the_routed_model_and_segments_with_it(tmp_path) -> None:
    from site_agent.federation.loop import SiteAgent

    with live_aggregator(tmp_path / "agg") as agg:
        write_site(tmp_path / "inside" / "data", n_train=4, n_val=1, n_test=0)
        inside_id, token = agg.add_site("inside")
        settings = agent_settings(tmp_path / "inside", agg.url, token, share_personal=True)
        with SiteAgent(settings) as agent:
            agent.prepare()  # enroll with the hospital's standing consent first
            experiment_id = agg.create_experiment(TINY, rounds=1, sites=[inside_id], train=TRAIN)
            agent.run(once=True)
        agg.wait_for(experiment_id, "completed")
        outside_manifest = write_site(tmp_path / "outside", n_train=1, n_val=0, n_test=2, seed=5)
        outside_id, outside_token = agg.add_site("outside")
        agg.researcher.post(
            f"/api/v1/experiments/{experiment_id}/grants", json={"site_id": outside_id}
        ).raise_for_status()
        work = tmp_path / "outside_work"
        args = [
            "adapt",
            "--experiment",
            experiment_id,
            "--manifest",
            str(outside_manifest),
            "--steps",
            "3",
            "--aggregator-url",
            agg.url,
            "--allow-insecure-http",
            "--work-dir",
            str(work),
            "--device",
            "cpu",
        ]
        result = runner.invoke(app, args, env={"FEDSEG_SITE_ENROLLMENT_TOKEN": outside_token})
        assert result.exit_code == 0, result.output
        assert (work / "routed" / f"{experiment_id}.safetensors").is_file()
        scan = tmp_path / "outside" / "images" / "case_te_000.nii.gz"
        result = runner.invoke(
            app,
            [
                "infer",
                str(scan),
                "-o",
                str(tmp_path / "routed_mask.nii.gz"),
                "--model",
                "routed",
                "--work-dir",
                str(work),
            ],
        )
        assert result.exit_code == 0, result.output
        assert nib.load(tmp_path / "routed_mask.nii.gz").shape == nib.load(scan).shape
        # The outside site scores the global model it never trained (spec from the routed model).
        global_model = tmp_path / "inside" / "work" / "global" / f"{experiment_id}.safetensors"
        for extra in (["--weights", str(global_model)], ["--model", "routed"]):
            result = runner.invoke(
                app,
                [
                    "evaluate",
                    "--json",
                    "--work-dir",
                    str(work),
                    "--manifest",
                    str(outside_manifest),
                    *extra,
                ],
            )
            assert result.exit_code == 0, result.output
            assert json.loads(result.output)["cases"] == 2
