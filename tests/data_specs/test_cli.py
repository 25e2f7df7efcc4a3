"""``fedseg data`` commands: exit codes, JSON output, and nothing written on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_specs.cli import app, parse_labels
from tests.data_specs.tiny_data import shared_acdc, tiny_site, write_pair

runner = CliRunner()


def test_synth_then_validate_exits_zero_and_prints_ok(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "synth",
            str(tmp_path),
            "--sites",
            "2",
            "--cases",
            "4",
            "--dims",
            "2",
            "--seed",
            "3",
            "--outside",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.split() == [
        str(tmp_path / n / "dataset.json") for n in ("site_1", "site_2", "outside_1")
    ]
    result = runner.invoke(app, ["validate", str(tmp_path / "site_1" / "dataset.json")])
    assert result.exit_code == 0 and "OK" in result.output


def test_validate_json_lists_problems_and_exits_one(tmp_path: Path) -> None:
    manifest = tiny_site(tmp_path)
    (tmp_path / "labels" / "c0.nii.gz").unlink()
    result = runner.invoke(app, ["validate", str(manifest), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["ok"] is False
    assert report["problems"] == [
        {"file": "labels/c0.nii.gz", "check": "exists", "expected": "a file", "found": "nothing"}
    ]


def test_validate_table_names_the_file(tmp_path: Path) -> None:
    manifest = tiny_site(tmp_path)
    (tmp_path / "images" / "c2.nii.gz").write_bytes(b"garbage")
    result = runner.invoke(app, ["validate", str(manifest)])
    assert result.exit_code == 1
    assert "images/c2.nii.gz" in result.output and "FAILED" in result.output


def test_synth_bad_arguments_fail_cleanly_and_write_nothing(tmp_path: Path) -> None:
    result = runner.invoke(app, ["synth", str(tmp_path / "o"), "--cases", "1"])
    assert result.exit_code == 1
    assert "cases >= 3" in result.output
    assert not (tmp_path / "o").exists()


def test_init_manifest_writes_a_valid_manifest_once(tmp_path: Path) -> None:
    for i in range(4):
        write_pair(tmp_path, f"case{i}", seed=i)
    args = [
        "init-manifest",
        str(tmp_path / "images"),
        "--out",
        str(tmp_path / "dataset.json"),
        "--label-dir",
        str(tmp_path / "labels"),
        "--label-suffix",
        "",
        "--site-id",
        "h1",
        "--labels",
        "0=background,1=ring,2=core",
        "--dims",
        "2",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["validate", str(tmp_path / "dataset.json")]).exit_code == 0
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "--overwrite" in again.output


def test_init_manifest_rejects_malformed_labels(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "init-manifest",
            str(tmp_path),
            "--site-id",
            "h",
            "--labels",
            "background",
            "--out",
            str(tmp_path / "d.json"),
        ],
    )
    assert result.exit_code != 0
    assert not (tmp_path / "d.json").exists()
    assert parse_labels("0=background, 1=RV") == {"0": "background", "1": "RV"}


@pytest.mark.skipif(
    not (shared_acdc() / "frames.csv").is_file(), reason="real ACDC data not present"
)
def test_acdc_manifests_command(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["acdc-manifests", str(shared_acdc()), str(tmp_path), "--seed", "1"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.parent.name for p in tmp_path.glob("*/dataset.json")) == [
        "acdc_dcm",
        "acdc_hcm",
        "acdc_minf",
        "acdc_nor",
        "acdc_rv",
    ]


def test_importing_data_specs_pulls_neither_torch_nor_monai() -> None:
    code = (
        "import sys\n"
        "import data_specs, data_specs.manifests.manifest, data_specs.imaging.imageio, data_specs.manifests.validate\n"
        "import data_specs.sources.synth, data_specs.sources.acdc, data_specs.cli, data_specs.imaging.transforms\n"
        "import data_specs.imaging.datasets\n"
        "print(sorted(m for m in ('torch', 'monai') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
