"""The first-round benchmark's report: one row per run, in order, a dash where a figure is missing."""

from __future__ import annotations

from benchmarks.first_round_bench import report


def test_report_has_one_row_per_run_with_dashes_for_missing_figures() -> None:
    rows = [
        {
            "idle_s": 0.0,
            "round_s": 7.9,
            "before_s": 7.1,
            "load_s": 0.18,
            "train_s": 0.16,
            "validate_s": 0.37,
        },
        {
            "idle_s": 20.0,
            "round_s": 0.92,
            "before_s": None,
            "load_s": 0.18,
            "train_s": 0.19,
            "validate_s": None,
        },
    ]
    text = report(rows, "python -m benchmarks.first_round_bench")
    table = [line for line in text.splitlines() if line.startswith("| ") and "idle" not in line]
    assert table == [
        "| 0 | 7.90 | 7.10 | 0.18 | 0.16 | 0.37 |",
        "| 20 | 0.92 | — | 0.18 | 0.19 | — |",
    ]
    assert "`python -m benchmarks.first_round_bench`" in text
