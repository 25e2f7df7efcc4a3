"""The agent's torch threads follow the CPUs it may use; FEDSEG_SITE_THREADS overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from site_agent.errors import SiteSettingsError
from site_agent.training.threads import affinity_cpus, cgroup_cpu_limit, pick_threads


def _cgroup_v2(tmp_path: Path, text: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cpu.max").write_text(text)
    return tmp_path


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(_cgroup_v2(tmp_path / "a", "150000 100000")) == 1.5
    assert cgroup_cpu_limit(_cgroup_v2(tmp_path / "b", "max 100000")) is None
    assert cgroup_cpu_limit(tmp_path / "missing") is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 0.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_pick_threads_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("site_agent.training.threads.affinity_cpus", lambda: 8)
    quota = _cgroup_v2(tmp_path, "250000 100000")  # 2.5 CPUs
    assert pick_threads({}, cgroup_root=quota) == (3, "cgroup quota")
    assert pick_threads({"OMP_NUM_THREADS": "2"}, cgroup_root=quota) == (2, "OMP_NUM_THREADS")
    env = {"FEDSEG_SITE_THREADS": "5", "OMP_NUM_THREADS": "2"}
    assert pick_threads(env, cgroup_root=quota) == (5, "FEDSEG_SITE_THREADS")
    unlimited = _cgroup_v2(tmp_path / "u", "max 100000")
    assert pick_threads({}, cgroup_root=unlimited) == (8, "affinity")
    generous = _cgroup_v2(tmp_path / "g", "1600000 100000")  # 16 CPUs, but only 8 in the mask
    assert pick_threads({}, cgroup_root=generous) == (8, "affinity")


@pytest.mark.parametrize("bad", ["0", "-1", "two", "2000"])
def test_bad_override_is_a_clear_error(bad: str) -> None:
    with pytest.raises(SiteSettingsError, match="FEDSEG_SITE_THREADS"):
        pick_threads({"FEDSEG_SITE_THREADS": bad})


def test_affinity_counts_this_process() -> None:
    import os

    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    assert affinity_cpus() == (expected or os.cpu_count())
