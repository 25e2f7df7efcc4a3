"""Experiment files for the console: YAML and JSON read alike; every problem points at its line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.console.experiment_file import ExperimentFileError, load_experiment_file

GOOD_YAML = """\
name: acdc-fedavg
spec:
  spatial_dims: 2
  channels: [4, 8]
  strides: [2]
  patch_size: [16, 16]
rounds: 3
train:
  local_epochs: 1
  lr: 0.01
  personalization:
    method: iopfl
strategy:
  name: fedavg
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_and_json_give_the_same_experiment(tmp_path: Path) -> None:
    from_yaml = load_experiment_file(write(tmp_path, "e.yaml", GOOD_YAML))
    import yaml

    as_json = json.dumps(yaml.safe_load(GOOD_YAML), indent=2)
    from_json = load_experiment_file(write(tmp_path, "e.json", as_json))
    assert from_yaml == from_json
    assert from_yaml.rounds == 3 and from_yaml.train.lr == 0.01
    assert from_yaml.train.personalization.method == "iopfl"


def test_every_invalid_field_is_reported_at_its_line(tmp_path: Path) -> None:
    bad = GOOD_YAML.replace("rounds: 3", "rounds: 0").replace("lr: 0.01", "lr: -1")
    bad = bad.replace("strategy:\n  name: fedavg", "strategy:\n  name: fedavg\ncolour: blue")
    with pytest.raises(ExperimentFileError) as info:
        load_experiment_file(write(tmp_path, "bad.yaml", bad))
    by_field = {p.field: p for p in info.value.problems}
    assert by_field["rounds"].line == 7 and by_field["rounds"].source == "rounds: 0"
    assert "greater than or equal to 1" in by_field["rounds"].message
    assert by_field["train.lr"].line == 10 and "lr: -1" in by_field["train.lr"].source
    assert by_field["colour"].line == 15 and "Extra inputs" in by_field["colour"].message
    text = info.value.render()
    assert f"{tmp_path / 'bad.yaml'}:7: rounds:" in text and "   7 | rounds: 0" in text


def test_a_missing_field_points_at_its_parent(tmp_path: Path) -> None:
    bad = GOOD_YAML.replace("  patch_size: [16, 16]\n", "").replace("rounds: 3\n", "")
    with pytest.raises(ExperimentFileError) as info:
        load_experiment_file(write(tmp_path, "bad.yaml", bad))
    fields = {p.field: p.line for p in info.value.problems}
    assert "rounds" in fields and fields["rounds"] == 1


def test_json_errors_have_lines_too(tmp_path: Path) -> None:
    body = {"name": "x", "spec": {"spatial_dims": 4}, "rounds": 2}
    with pytest.raises(ExperimentFileError) as info:
        load_experiment_file(write(tmp_path, "e.json", json.dumps(body, indent=2)))
    dims = next(p for p in info.value.problems if p.field == "spec.spatial_dims")
    assert dims.line == 4 and '"spatial_dims": 4' in dims.source
    with pytest.raises(ExperimentFileError) as syntax:
        load_experiment_file(write(tmp_path, "broken.json", '{\n  "name": "x",\n}'))
    assert syntax.value.problems[0].line == 3 and "invalid JSON" in syntax.value.problems[0].message


def test_yaml_syntax_and_shape_errors(tmp_path: Path) -> None:
    with pytest.raises(ExperimentFileError) as info:
        load_experiment_file(write(tmp_path, "e.yaml", "name: x\nspec: [1, 2\nrounds: 2\n"))
    assert "invalid YAML" in info.value.problems[0].message and info.value.problems[0].line
    with pytest.raises(ExperimentFileError) as shape:
        load_experiment_file(write(tmp_path, "list.yaml", "- 1\n- 2\n"))
    assert "expected a mapping" in shape.value.problems[0].message
    with pytest.raises(ExperimentFileError) as missing:
        load_experiment_file(tmp_path / "nope.yaml")
    assert "cannot read" in missing.value.problems[0].message
