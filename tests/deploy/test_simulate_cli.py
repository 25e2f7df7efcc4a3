"""``fedseg simulate`` takes the channels from the manifest and fails loudly when the experiment does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deploy.cli import app
from deploy.launcher.launcher_cli import simulation_spec
from tests.data_specs.test_label_mapping import photo_site

runner = CliRunner()


def _site(tmp_path: Path) -> Path:
    """Three-channel photographs (RGB), two classes."""
    manifest = photo_site(tmp_path / "site", mask_kind="0255", n=6, label_map={"255": 1})
    data = json.loads(manifest.read_text())
    data["test"] = data["training"][4:]
    data["training"] = data["training"][:4]
    manifest.write_text(json.dumps(data))
    return manifest


def test_simulate_takes_channels_and_classes_from_the_manifest(tmp_path: Path) -> None:
    spec = simulation_spec([_site(tmp_path)], dims=2, patch=16)
    assert (spec.in_channels, spec.out_channels) == (3, 2)
    spec = simulation_spec([_site(tmp_path)], dims=2, patch=16, in_channels=1, classes=4)
    assert (spec.in_channels, spec.out_channels) == (1, 4)


@pytest.mark.slow
def test_a_failed_experiment_is_a_failed_command(tmp_path: Path) -> None:
    args = ["simulate", str(_site(tmp_path)), "--out", str(tmp_path / "run"), "--rounds", "1"]
    result = runner.invoke(app, [*args, "--patch", "16", "--in-channels", "1"])
    assert result.exit_code == 1, result.output
    assert "simulation failed" in result.output
