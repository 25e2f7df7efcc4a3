"""The finished task's global model is kept (fsynced, linked) while the next task trains, not
between the upload and the next poll, where its write competed with the aggregator's close."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from data_specs.wire import TaskAssignment
from site_agent.federation.client import AggregatorClient
from site_agent.federation.task_runner import TaskOutcome, TaskRunner
from site_agent.federation.update_files import RoundFiles
from site_agent.federation.workdir import TaskState, WorkDir
from tests.site_agent.test_restart_and_failures import one_site


@pytest.mark.slow
def test_the_global_is_kept_while_the_next_task_trains_and_when_the_agent_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with one_site(tmp_path, rounds=2) as site:
        events: list[str] = []
        shas: list[str] = []
        real_next, real_keep, real_persist = (
            AggregatorClient.next_task,
            RoundFiles.keep_global,
            TaskRunner._persist,
        )

        def next_task(self: AggregatorClient, *args: object) -> TaskAssignment | None:
            events.append("poll")
            return real_next(self, *args)  # type: ignore[arg-type]

        def keep(self: RoundFiles) -> None:
            events.append(f"keep {self.task.round}")
            shas.append(self.task.model_sha256)
            real_keep(self)

        def persist(self: TaskRunner, trained: TaskState, files: RoundFiles) -> object:
            events.append(f"trained {files.task.round}")
            return real_persist(self, trained, files)

        monkeypatch.setattr(AggregatorClient, "next_task", next_task)
        monkeypatch.setattr(RoundFiles, "keep_global", keep)
        monkeypatch.setattr(TaskRunner, "_persist", persist)
        with site.agent() as agent:
            outcomes = agent.run(max_tasks=2).outcomes
        assert outcomes == [TaskOutcome.ACCEPTED, TaskOutcome.ACCEPTED]
        assert events == ["poll", "trained 1", "poll", "keep 1", "trained 2", "keep 2"]
        kept = site.root / "work" / "global" / f"{site.experiment_id}.safetensors"
        assert hashlib.sha256(kept.read_bytes()).hexdigest() == shas[-1]  # round 2's model
        assert not list((site.root / "work" / "tasks").rglob("*.safetensors"))  # cleaned up


def test_a_restart_removes_the_large_files_a_crash_left_in_finished_tasks(
    tmp_path: Path,
) -> None:
    work = WorkDir(tmp_path / "w")
    tasks = work.root / "tasks"
    for name in ("done", "current"):
        (tasks / name).mkdir(parents=True)
        (tasks / name / "global.safetensors").write_bytes(b"x" * 10)
        (tasks / name / "receipt.json").write_text("{}")
    (tasks / "done" / "update.safetensors").write_bytes(b"y")

    current = SimpleNamespace(task=SimpleNamespace(task_id="current"))  # a TaskState's path
    assert work.remove_finished_task_files(current) == 1  # type: ignore[arg-type]
    assert sorted(p.name for p in (tasks / "done").iterdir()) == ["receipt.json"]
    assert (tasks / "current" / "global.safetensors").exists()  # the task in progress
    assert work.remove_finished_task_files(None) == 1
    assert not list(tasks.rglob("*.safetensors"))
