"""Intake of site uploads: find the task, check the staged bundle, store it, record the report.

The staged file is fsynced and renamed into the blob store, and the task row committed, before
the caller answers 200: an accepted update survives ``kill -9`` right after the reply.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.crud import experiments as exp_crud
from aggregator.crud import site_requests
from aggregator.crud import tasks as task_crud
from aggregator.crud.events import record_event
from aggregator.crud.experiment_facts import ExperimentFacts, experiment_facts
from aggregator.crud.routing import share_personal_model
from aggregator.errors import ConflictError
from aggregator.logs import log_event
from aggregator.privacy.adaptive_clipping import round_norm_bound
from aggregator.rounds.validation import UpdatePolicy, check_model, check_update
from aggregator.storage.blobs import BlobStore, StagedBlob
from aggregator.storage.db.models import ExperimentStatus, Task, TaskStatus, utcnow
from data_specs.event_kinds import EventKind
from data_specs.weights.bundle import BundleMeta, encode_bundle
from data_specs.wire import SiteMetrics, UpdateReceipt

if TYPE_CHECKING:
    from aggregator.crud.sqlite_reports import SqliteReports

log = logging.getLogger("aggregator.rounds.intake")


@dataclass(frozen=True)
class UpdateTarget:
    """Everything needed to judge an update once its body is on disk."""

    task_id: str
    site_id: str
    experiment_id: str
    policy: UpdatePolicy
    global_path: Path


@dataclass(frozen=True)
class UpdateOutcome:
    """The receipt for the site, plus the reject label for metrics (None when accepted).

    ``unreported``: how many of the round's tasks had not reported once this report was written
    (0: it was the round's last; None: a duplicate, or a round without a progress row).
    """

    receipt: UpdateReceipt
    reject_code: str | None = None
    unreported: int | None = None


@dataclass(frozen=True)
class ModelTarget:
    """Where a shared personal model goes and what it must look like."""

    task_id: str
    site_id: str
    experiment_id: str
    round_number: int
    spec_hash: str
    expected: dict[str, tuple[tuple[int, ...], str]]


def prepare_update(
    session: Session, *, blobs: BlobStore, task_id: str, site_id: str, sha256: str
) -> UpdateTarget | UpdateReceipt:
    """Before reading the body: the task's policy, or the receipt of an identical earlier upload.

    Raises:
        NotFoundError: not this site's task.
        ConflictError: the task already reported otherwise, or its round is closed.
    """
    ctx = site_requests.upload_context(session, task_id=task_id, site_id=site_id)
    duplicate = duplicate_receipt(ctx, sha256)
    if duplicate is not None:
        return duplicate
    site_requests.require_open(ctx)
    facts = experiment_facts(session, experiment_id=ctx.experiment_id, started_at=ctx.started_at)
    bound = round_norm_bound(
        session, experiment_id=facts.id, cfg=facts.cfg, round_number=ctx.round_number
    )
    return update_target(ctx, site_id=site_id, facts=facts, norm_bound=bound, blobs=blobs)


def duplicate_receipt(ctx: site_requests.UploadContext, sha256: str) -> UpdateReceipt | None:
    """The receipt of an identical earlier upload of the task, if that is what this is."""
    if ctx.update_sha256 == sha256 and ctx.status in (TaskStatus.ACCEPTED, TaskStatus.REJECTED):
        return _receipt(ctx.task_id, sha256, ctx.status, ctx.reject_reason, duplicate=True)
    return None


def update_target(
    ctx: site_requests.UploadContext,
    *,
    site_id: str,
    facts: ExperimentFacts,
    norm_bound: float | None,
    blobs: BlobStore,
) -> UpdateTarget:
    """The checks an open task's update must pass (``prepare_update`` without its reads).

    Raises:
        NotFoundError: the round's starting model is missing.
    """
    previous = site_requests.previous_model(ctx)
    policy = UpdatePolicy(
        spec_hash=facts.spec_hash,
        round_number=ctx.round_number,
        expected=facts.expected,
        local_keys=frozenset(facts.local_keys),
        norm_bound=norm_bound,
        codec=facts.cfg.train.codec.name,
        task_seed=ctx.seed,
    )
    return UpdateTarget(ctx.task_id, site_id, facts.id, policy, blobs.require(previous))


def accept_update(
    session: Session,
    *,
    blobs: BlobStore,
    target: UpdateTarget,
    staged: StagedBlob,
    num_samples: int,
    metrics: SiteMetrics | None,
    at_once: bool = False,
    reports: SqliteReports | None = None,
) -> UpdateOutcome:
    """Check a staged update and record it as accepted or rejected (durable on return).

    With ``at_once`` (PostgreSQL, a session without a transaction) the report and its event
    are one statement that commits by itself (``site_requests.record_report_at_once``). With
    ``reports`` (a SQLite file) they are one transaction on that writer's own connection
    (``SqliteReports.record``); the session is then used only when the report lost.

    Raises:
        InvalidRequestError: the bundle breaks the contract (nothing is recorded).
        ConflictError: the round closed, or another update was recorded, meanwhile.
    """
    ref = staged.finish()
    checked = check_update(
        staged.path,
        num_samples=num_samples,
        policy=target.policy,
        global_path=target.global_path,
        data=staged.body,  # a small upload's bytes, still in memory
    )
    stored: str | None = None
    if checked.accepted:
        if checked.decoded is not None:
            meta = BundleMeta(
                spec_hash=checked.meta.spec_hash,
                round=checked.meta.round,
                kind=checked.meta.kind,
                num_samples=checked.meta.num_samples,
            )
            stored = blobs.put_bytes(encode_bundle(checked.decoded, meta)).sha256
        else:
            stored = staged.commit().sha256
    status = TaskStatus.ACCEPTED if checked.accepted else TaskStatus.REJECTED
    values = {
        "update_sha256": ref.sha256,
        "update_blob_sha256": stored,
        "bytes_up": ref.size,
        "num_samples": num_samples,
        "metrics": metrics.model_dump(exclude_none=True) if metrics else None,
        "reject_reason": checked.reason,
    }
    event: dict[str, Any] = {
        "kind": EventKind.UPDATE_ACCEPTED if checked.accepted else EventKind.UPDATE_REJECTED,
        "actor": f"site:{target.site_id}",
        "experiment_id": target.experiment_id,
        "detail": {
            "task_id": target.task_id,
            "round": target.policy.round_number,
            "sha256": ref.sha256,
            "num_samples": num_samples,
            "norm": None if checked.norm is None else round(checked.norm, 6),
            "reason": checked.reason,
        },
    }
    if reports is not None:
        recorded = reports.record(
            task_id=target.task_id, status=status, now=utcnow(), values=values, event=event
        )
    elif at_once:
        recorded = site_requests.record_report_at_once(
            session, task_id=target.task_id, status=status, now=utcnow(), values=values, event=event
        )
    else:
        recorded = site_requests.record_report(
            session, task_id=target.task_id, status=status, now=utcnow(), values=values
        )
    if not recorded.won:
        session.rollback()
        task = task_crud.refresh_task(session, task_id=target.task_id)
        if task.update_sha256 == ref.sha256:
            return UpdateOutcome(
                _receipt(task.id, ref.sha256, task.status, task.reject_reason, duplicate=True)
            )
        task_crud.ensure_open(session, task=task)  # raises the precise conflict
        raise ConflictError(f"task {target.task_id} changed while its update was checked; retry")
    if not at_once and reports is None:
        site_requests.insert_event(session, **event)
        session.commit()
    log_event(
        log,
        EventKind.UPDATE_ACCEPTED if checked.accepted else EventKind.UPDATE_REJECTED,
        task_id=target.task_id,
        site_id=target.site_id,
        round=target.policy.round_number,
        bytes=ref.size,
        num_samples=num_samples,
        reason=checked.reason,
    )
    return UpdateOutcome(
        _receipt(target.task_id, ref.sha256, status, checked.reason, duplicate=False),
        checked.code,
        recorded.unreported,
    )


def prepare_personal(session: Session, *, task_id: str, site_id: str) -> ModelTarget:
    """Where a site's personal model for a task goes.

    Raises:
        NotFoundError: not this site's task.
        ConflictError: the experiment was aborted, or the task is not the site's latest in it
            (personal models only for the open or last task, so old tasks cannot be replayed).
    """
    task = task_crud.get_site_task(session, task_id=task_id, site_id=site_id)
    experiment = exp_crud.get_experiment(session, experiment_id=task.experiment_id)
    if experiment.status == ExperimentStatus.ABORTED:
        raise ConflictError(f"experiment {experiment.id} was aborted: personal models are closed")
    latest = session.scalar(
        select(Task.id)
        .where(Task.experiment_id == task.experiment_id, Task.site_id == site_id)
        .order_by(Task.round_number.desc(), Task.created_at.desc())
        .limit(1)
    )
    if latest != task.id:
        raise ConflictError(
            f"task {task.id} is not this site's latest task of experiment {experiment.id}: "
            "personal models are accepted for the open or last task only"
        )
    return ModelTarget(
        task.id,
        site_id,
        experiment.id,
        task.round_number,
        experiment.spec_hash,
        exp_crud.expected_of(experiment),
    )


def accept_personal(session: Session, *, target: ModelTarget, staged: StagedBlob) -> UpdateReceipt:
    """Check and store a shared personal model (the newest per site feeds the routing bundle)."""
    staged.finish()
    check_model(staged.path, spec_hash=target.spec_hash, expected=target.expected)
    ref = staged.commit()
    changed = share_personal_model(
        session,
        experiment_id=target.experiment_id,
        site_id=target.site_id,
        round_number=target.round_number,
        sha256=ref.sha256,
        size=ref.size,
    )
    session.commit()
    return UpdateReceipt(
        task_id=target.task_id, sha256=ref.sha256, accepted=True, duplicate=not changed
    )


def report_failure(session: Session, *, task_id: str, site_id: str, reason: str) -> str:
    """A site gives up a task; returns the task's status (idempotent for a repeated report).

    Raises:
        NotFoundError: not this site's task.
        ConflictError: the task already reported otherwise, or its round is closed.
    """
    task = task_crud.get_site_task(session, task_id=task_id, site_id=site_id)
    if task.status == TaskStatus.FAILED:
        return task.status
    task_crud.ensure_open(session, task=task)
    if not task_crud.record_report(
        session,
        task_id=task_id,
        status=TaskStatus.FAILED,
        now=utcnow(),
        values={"failure_reason": reason},
    ):
        session.rollback()
        task_crud.ensure_open(session, task=task_crud.refresh_task(session, task_id=task_id))
        raise ConflictError(f"task {task_id} changed while its failure was recorded; retry")
    record_event(
        session,
        kind=EventKind.TASK_FAILED,
        actor=f"site:{site_id}",
        experiment_id=task.experiment_id,
        detail={"task_id": task_id, "round": task.round_number, "reason": reason},
    )
    session.commit()
    log_event(log, "task.failed", task_id=task_id, site_id=site_id, round=task.round_number)
    return TaskStatus.FAILED


def _receipt(
    task_id: str, sha256: str, status: str, reason: str | None, *, duplicate: bool
) -> UpdateReceipt:
    return UpdateReceipt(
        task_id=task_id,
        sha256=sha256,
        accepted=status == TaskStatus.ACCEPTED,
        duplicate=duplicate,
        reason=reason,
    )
