"""The data loads beside the download, and the validation scans beside the first trainings; a
load failure still drops the task with a clear reason."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from data_specs.wire import TaskAssignment
from site_agent.errors import TrainingError
from site_agent.federation.privacy import FailureReason
from site_agent.federation.task_runner import TaskOutcome
from site_agent.training.datasets import validates_in_round
from tests.site_agent.conftest import TINY, write_site
from tests.site_agent.test_restart_and_failures import one_site


@pytest.mark.slow
def test_a_scan_that_no_longer_loads_drops_the_task(tmp_path) -> None:
    with one_site(tmp_path) as site:
        with site.agent() as agent:
            agent.prepare()  # the manifest validates at start-up ...
            scan = sorted((site.root / "data" / "images").glob("*_tr_*"))[0]
            scan.write_bytes(b"no longer a NIfTI file")  # ... and a scan breaks afterwards
            summary = agent.run(once=True)
        assert summary.outcomes == [TaskOutcome.DROPPED]
        assert site.sent("PUT", "/update") == []
        assert site.sent("GET", "/model") == []  # the model came with the task
        rnd = site.agg.rounds(site.experiment_id)[0]
        assert rnd["sites"][0]["failure_reason"] == FailureReason.TRAINING_FAILED.value


def _task(round_: int, every: int, total: int | None) -> TaskAssignment:
    return TaskAssignment(
        task_id="t",
        experiment_id="e",
        round=round_,
        spec=TINY,
        spec_hash=TINY.spec_hash(),
        model_sha256="0" * 64,
        model_size=0,
        train={"validate_every": every},
        total_rounds=total,
    )


def test_validation_every_k_rounds_and_in_the_last() -> None:
    assert [r for r in range(1, 8) if validates_in_round(_task(r, 3, 7))] == [3, 6, 7]
    assert all(validates_in_round(_task(r, 1, 7)) for r in range(1, 8))
    assert [r for r in range(1, 6) if validates_in_round(_task(r, 2, None))] == [2, 4]


def _trainers(tmp_path: Path) -> Any:
    from site_agent.federation.workdir import WorkDir
    from site_agent.settings import SiteSettings
    from site_agent.training.datasets import ManifestTrainers

    manifest = write_site(tmp_path / "site", n_train=2, n_val=2, n_test=0)
    settings = SiteSettings(
        aggregator_url="https://127.0.0.1:1", manifest=manifest, work_dir=tmp_path / "work"
    )
    return ManifestTrainers(settings, WorkDir(settings.work_dir)), manifest


def test_validation_scans_load_in_the_background_from_the_first_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from site_agent.clinic import scan_evaluation

    calls: list[tuple[str, int | None]] = []
    real = scan_evaluation.load_eval_cases

    def counted(*args: Any, workers: int | None = None, **kw: Any) -> Any:
        calls.append((threading.current_thread().name, workers))
        return real(*args, workers=workers, **kw)

    monkeypatch.setattr(scan_evaluation, "load_eval_cases", counted)
    trainers, _ = _trainers(tmp_path)
    first = trainers(_task(1, 3, 6))  # trains only ...
    assert first.val_data is None
    trainers._eval_cases[1].result(timeout=60)  # ... while the scans were read beside it
    assert calls == [("fedseg-val-scans", 1)]  # one reader, not the caller's thread
    third = trainers(_task(3, 3, 6))
    assert third.val_data is not None and len(third.val_data) == 2
    assert trainers(_task(6, 3, 6)).val_data is third.val_data  # read once
    assert len(calls) == 1


def test_validation_scans_that_fail_to_load_fail_the_validating_round_and_load_again(
    tmp_path: Path,
) -> None:
    trainers, manifest = _trainers(tmp_path)
    scan = sorted((manifest.parent / "images").glob("*_va_*"))[0]
    good = scan.read_bytes()
    scan.write_bytes(b"not a NIfTI file")
    with pytest.raises(TrainingError, match="validation case did not load"):
        trainers(_task(3, 3, 6))
    scan.write_bytes(good)  # fixed: the next validating round reads them again
    assert len(trainers(_task(6, 3, 6)).val_data) == 2
