"""The outside table's ORACLE bounds (labels used): the figures and the report (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.suite.outside_oracle import fold_bounds, report
from benchmarks.suite.outside_report import _oracle_line


def _volumes() -> dict[str, list[float]]:
    return {
        "global|stored": [0.6, 0.8],
        "global|site": [0.7, 0.5],
        "global|mix": [0.65, 0.7],
        "a|stored": [0.9, 0.5],
        "a|site": [0.2, 0.2],
        "a|mix": [0.3, 0.3],
    }


def test_fold_bounds_choose_per_fold_and_per_volume() -> None:
    b = fold_bounds(_volumes(), {"30": 0.75})
    assert b["global"] == pytest.approx(0.7)
    assert b["global site BN"] == pytest.approx(0.6)
    assert b["global mix BN"] == pytest.approx(0.675)
    assert b["best model (labels)"] == pytest.approx(0.7)  # a|stored ties global|stored
    assert b["best model × BN (labels)"] == pytest.approx(0.7)
    assert b["best model per volume (labels)"] == pytest.approx(0.85)  # 0.9 and 0.8
    assert b["best model × BN per volume (labels)"] == pytest.approx(0.85)
    assert b["fine-tuned 30 steps (labels)"] == pytest.approx(0.75)


def test_report_has_a_mean_and_a_gain_row() -> None:
    figures = {
        "DCM": {"global": 0.8, "fine-tuned 30 steps (labels)": 0.82},
        "HCM": {"global": 0.6, "fine-tuned 30 steps (labels)": 0.66},
    }
    text = report(figures)
    assert "ORACLE" in text
    assert "| mean | 0.700 | 0.740 |" in text
    assert "| mean − global (points) | +0.0 | +4.0 |" in text
    assert "**+4.0 points** (fine-tuned 30 steps (labels)), so it is **within**" in text
    figures["HCM"]["fine-tuned 30 steps (labels)"] = 0.62
    assert "**+2.0 points** (fine-tuned 30 steps (labels)), so it is **out of**" in report(figures)


def test_outside_report_quotes_the_oracle_gains(tmp_path: Path) -> None:
    assert _oracle_line(tmp_path / "missing.json") == []
    path = tmp_path / "oracle.json"
    bounds = {
        "global": 0.7,
        "best model × BN (labels)": 0.72,
        "best model × BN per volume (labels)": 0.74,
        "fine-tuned 120 steps (labels)": 0.71,
    }
    path.write_text(json.dumps({"HCM": bounds}))
    (line,) = _oracle_line(path)
    assert "+2.0 points over global" in line
    assert "per test volume +4.0" in line
    assert "+1.0 (120 steps)" in line
