"""``state.json`` is fsynced in ``trained`` (and ``uploaded`` under secure aggregation); the other
phases are only replaced atomically, as are plain receipts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from data_specs.files import atomic_write_bytes, atomic_writer
from data_specs.privacy.secagg_wire import SecAggTask
from data_specs.wire import TaskAssignment, UpdateReceipt
from site_agent.federation.update_files import RoundFiles
from site_agent.federation.workdir import TaskPhase, TaskState, WorkDir
from tests.site_agent.conftest import TINY


def _state(phase: TaskPhase, *, secagg: bool = False) -> TaskState:
    masked = SecAggTask(index=1, sites=3, threshold=2, context="e/1/0") if secagg else None
    task = TaskAssignment(
        task_id="t",
        experiment_id="e",
        round=1,
        spec=TINY,
        spec_hash=TINY.spec_hash(),
        model_sha256="0" * 64,
        model_size=0,
        train={},
        secagg=masked,
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
    ("phase", "secagg", "durable"),
    [
        (TaskPhase.ASSIGNED, False, False),
        (TaskPhase.DOWNLOADED, False, False),
        (TaskPhase.TRAINED, False, True),
        (TaskPhase.UPLOADED, False, False),  # lost: the same bytes are sent again
        (TaskPhase.TRAINED, True, True),
        (TaskPhase.UPLOADED, True, True),
    ],
)
def test_only_the_phases_a_restart_cannot_redo_are_fsynced(
    tmp_path: Path, fsyncs: list[int], phase: TaskPhase, secagg: bool, durable: bool
) -> None:
    work = WorkDir(tmp_path / "w")
    work.ensure()
    fsyncs.clear()
    work.save_state(_state(phase, secagg=secagg))
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


@pytest.mark.parametrize(("secagg", "durable"), [(False, False), (True, True)])
def test_a_plain_receipt_is_not_fsynced(
    tmp_path: Path, fsyncs: list[int], secagg: bool, durable: bool
) -> None:
    work = WorkDir(tmp_path / "w")
    files = RoundFiles(work, _state(TaskPhase.UPLOADED, secagg=secagg).task)
    work.ensure(files.folder)
    fsyncs.clear()
    receipt = UpdateReceipt(task_id="t", sha256="1" * 64, accepted=True)
    files.save_receipt(receipt)
    assert len(fsyncs) == (2 if durable else 0)
    assert files.read_receipt() == receipt
