"""The round-timeline benchmark's CPU sentence: the floor claim only where training is a sleep."""

from __future__ import annotations

import os

from benchmarks.round_timeline import FederationRun, cpu_lines


def _run() -> FederationRun:
    names = ["aggregator", "a", "b"]
    at = {"healthy": 1.0, "enrolled": 1.5, "started": 2.0, "round 2": 2.5, "finished": 4.5}
    return FederationRun(
        t_launch=0.0,
        t_healthy=1.0,
        t_enrolled=2.0,
        t_started=3.0,
        t_finished=9.0,
        rounds=[],
        cpu_s={moment: dict.fromkeys(names, value) for moment, value in at.items()},
    )


def test_the_steady_cpu_is_a_wall_time_floor_only_for_a_sleeping_training() -> None:
    sleeping = cpu_lines(_run(), 3)
    training = cpu_lines(_run(), 3, sleeping=False)
    # rounds 2-3: (4.5 - 2.5) / 2 = 1.0 CPU s each for 3 processes = 3.0 per round
    assert "all 3 processes together 3.000 CPU s per round" in sleeping
    cores = os.cpu_count() or 1
    assert f"on {cores} cores at least {3.0 / cores:.3f} s of wall time" in sleeping
    assert "3.000 CPU s per round (training and validation included)." in training
    assert "wall time" not in training


def test_no_proc_says_so() -> None:
    run = _run()
    run.cpu_s = {}
    assert cpu_lines(run, 3) == "CPU seconds: not measured (no /proc)."
