"""``state.json`` is fsynced from ``trained`` on; the earlier phases are only replaced atomically."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from data_specs.files import atomic_write_bytes, atomic_writer
from data_specs.wire import TaskAssignment
from site_agent.federation.workdir import TaskPhase, TaskState, WorkDir
from tests.site_agent.conftest import TINY


def _state(phase: TaskPhase) -> TaskState:
    task = TaskAssignment(
        task_id="t",
        experiment_id="e",
        round=1,
        spec=TINY,
        spec_hash=TINY.spec_hash(),
        model_sha256="0" * 64,
        model_size=0,
        train={},
    )
    sha = "1" * 64 if phase in (TaskPhase.TRAINED, TaskPhase.UPLOADED) else None
    return TaskState(task=task, phase=phase, update_sha256=sha)


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


@pytest.mark.parametrize(
    ("phase", "durable"),
    [
        (TaskPhase.ASSIGNED, False),
        (TaskPhase.DOWNLOADED, False),
        (TaskPhase.TRAINED, True),
        (TaskPhase.UPLOADED, True),
    ],
)
def test_only_the_phases_a_restart_cannot_redo_are_fsynced(
    tmp_path: Path, fsyncs: list[int], phase: TaskPhase, durable: bool
) -> None:
    work = WorkDir(tmp_path / "w")
    work.ensure()
    fsyncs.clear()
    work.save_state(_state(phase))
    assert (len(fsyncs) == 2) == durable and (len(fsyncs) == 0) == (not durable)  # file + folder
    loaded = work.load_state()
    assert loaded is not None and loaded.phase == phase


def test_a_non_durable_write_is_still_atomic(tmp_path: Path, fsyncs: list[int]) -> None:
    path = tmp_path / "f.json"
    atomic_write_bytes(path, b"old")
    fsyncs.clear()
    with pytest.raises(RuntimeError), atomic_writer(path, durable=False) as fh:
        fh.write(b"half")
        raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old" and fsyncs == []
    assert not list(tmp_path.glob(".*.tmp"))
    atomic_write_bytes(path, b"new", durable=False)
    assert path.read_bytes() == b"new" and fsyncs == []
