"""The data loads beside the download: a load failure still drops the task with a clear reason."""

from __future__ import annotations

import pytest

from data_specs.wire import TaskAssignment
from site_agent.federation.privacy import FailureReason
from site_agent.federation.task_runner import TaskOutcome
from site_agent.training.datasets import validates_in_round
from tests.site_agent.conftest import TINY
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
