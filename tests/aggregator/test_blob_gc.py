"""Blob GC removes only blobs no row names, and never one younger than the grace period."""

from __future__ import annotations

import os
import time

from aggregator.api.deps import Services
from aggregator.storage.blob_gc import collect, referenced_blobs
from tests.aggregator.helpers import Federation


def _age_everything(services: Services, seconds: float) -> None:
    old = time.time() - seconds
    for path in services.blobs.root.rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))


def test_gc_keeps_every_referenced_blob_and_removes_orphans(
    fed: Federation, services: Services
) -> None:
    exp = fed.create_experiment(rounds=2, train={"codec": {"downlink_float16": True}})
    fed.start(exp)
    services.orchestrator.step()
    for _ in (1, 2):
        for name in fed.sites:
            task = fed.next_task(name)
            assert task is not None
            assert fed.train_and_upload(name, task).status_code == 200
        services.orchestrator.step()
    assert fed.experiment(exp)["status"] == "completed"
    orphan = services.blobs.put_bytes(b"left over by a refused upload")
    _age_everything(services, 3 * 86400)
    # A blob stored just now and not yet named by a row: what a crash between the two steps leaves.
    in_flight = services.blobs.put_bytes(b"stored, row not yet committed")
    with services.database.session() as session:
        wanted = referenced_blobs(session)
        report = collect(session, services.blobs, grace_s=86400)
    assert report.removed == 1 and not services.blobs.exists(orphan.sha256)
    assert services.blobs.exists(in_flight.sha256)
    assert wanted and all(services.blobs.exists(sha) for sha in wanted)
    for number in (0, 1, 2):  # every model is still served
        assert fed.round_model(exp, number)
    with services.database.session() as session:
        again = collect(session, services.blobs, grace_s=86400)
    assert (
        again.removed == 0
    )  # idempotent: a second run (or one after a crash) removes nothing more


def test_personal_models_only_for_the_latest_task(fed: Federation, services: Services) -> None:
    from tests.aggregator.helpers import API, sha256

    exp = fed.create_experiment(rounds=2)
    fed.start(exp)
    services.orchestrator.step()
    first = fed.next_task("site-a")
    assert first is not None
    model = fed.model("site-a", first["task_id"])

    def share(task_id: str) -> int:
        headers = {**fed.sh("site-a"), "X-Content-SHA256": sha256(model)}
        r = fed.client.put(f"{API}/tasks/{task_id}/personal", content=model, headers=headers)
        return r.status_code

    assert share(first["task_id"]) == 200  # the open task
    for name in fed.sites:
        task = first if name == "site-a" else fed.next_task(name)
        assert task is not None
        assert fed.train_and_upload(name, task).status_code == 200
    services.orchestrator.step()
    second = fed.next_task("site-a")
    assert second is not None and second["round"] == 2
    assert share(first["task_id"]) == 409  # an old task cannot be replayed
    assert share(second["task_id"]) == 200
