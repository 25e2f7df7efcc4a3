"""``/tasks``: what a site pulls (next task, the model) and sends back (update, failure, personal model).

Every route acts for the calling site only: another site's task is simply not found.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from starlette.types import Receive

from aggregator.api import db_threads
from aggregator.api.deps import CurrentSite, Services, ServicesDep, SessionDep
from aggregator.api.uploads import (
    BUNDLE_BODY,
    HOLD_BYTES,
    UPLOAD_RESPONSES,
    content_length,
    metrics_header,
    num_samples_header,
    receive_upload,
    sha256_header,
)
from aggregator.crud import site_requests
from aggregator.crud import tasks as task_crud
from aggregator.crud.experiment_facts import cached_facts
from aggregator.errors import ConflictError, InvalidRequestError
from aggregator.rounds import intake
from aggregator.storage.db.models import TaskStatus, utcnow
from data_specs.constants import (
    HEADER_SHA256,
    HEADER_TASK_BYTES,
    INLINE_MODEL_MAX_BYTES,
    MEDIA_TASK_AND_MODEL,
)
from data_specs.researcher import TaskStatusPublic
from data_specs.wire import FailureReport, TaskAssignment, UpdateReceipt

router = APIRouter(prefix="/tasks", tags=["tasks"])


@router.get(
    "/next",
    responses={
        200: {"model": TaskAssignment},
        204: {"description": "no task within `wait` seconds"},
    },
    response_model=None,
)
async def next_task(
    request: Request,
    services: ServicesDep,
    site: CurrentSite,
    wait: Annotated[
        float, Query(ge=0.0, le=3600.0, description="long-poll seconds (capped)")
    ] = 0.0,
    model: Annotated[
        bool,
        Query(
            description="send the task's global model in the same body "
            f"(`{MEDIA_TASK_AND_MODEL}`: the assignment's JSON, `{HEADER_TASK_BYTES}` bytes, "
            f"then the model; over {INLINE_MODEL_MAX_BYTES} bytes, JSON alone)"
        ),
    ] = False,
) -> TaskAssignment | Response:
    """The site's next task, waiting up to ``wait`` seconds (capped by ``max_long_poll_s``).

    With ``model``, the task's global model comes in the same answer: one request fewer per
    site and round (``GET /tasks/{id}/model`` stays for large models and retries).
    """
    loop = asyncio.get_running_loop()
    give_up = loop.time() + min(wait, services.settings.max_long_poll_s)
    while True:
        wake = services.board.waiter(site.id)  # taken before the check: no lost wake-up
        found = await _find(services, site.id, model)
        if found is not None:  # serialised here: FastAPI's generic encoder costs more
            assignment, body = found
            text = assignment.model_dump_json().encode()
            if body is None:
                return Response(text, media_type="application/json")
            _count_model_bytes(services, site.name, len(body))
            return Response(
                text + body,
                media_type=MEDIA_TASK_AND_MODEL,
                headers={HEADER_TASK_BYTES: str(len(text)), HEADER_SHA256: assignment.model_sha256},
            )
        remaining = give_up - loop.time()
        if remaining <= 0:
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        gauge = services.metrics.long_polls_waiting
        gauge.inc()
        try:
            woken = await _woken(wake, remaining, request.receive)
        finally:
            gauge.dec()
        if not woken:  # the wait is over, or the site has gone: nobody to hand a task to
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        if services.board.closed:  # the server is stopping: the site polls again later
            return Response(status_code=status.HTTP_204_NO_CONTENT)


# The poll's steps are module functions, not closures of ``next_task``: every site waits in a
# poll between rounds, and each closure (and its cells) would stay in memory while it waits.


async def _find(
    services: Services, site_id: str, model: bool
) -> tuple[TaskAssignment, bytes | None] | None:
    """The site's open task with its model's bytes when ``model`` asks and they are at hand."""
    reads = services.async_reads
    if reads is None:
        return await db_threads.read(
            _deliver, services, site_id, model, inline=services.database.is_sqlite
        )
    # The look-up on the event loop's own connection (SiteReads); the rest from memory, else
    # as above.
    row = await reads.one(site_requests.NEXT_TASK, {"site_id": site_id})
    if row is None:
        return None
    task = site_requests.OpenTask(**row)
    facts = cached_facts(experiment_id=task.experiment_id, started_at=task.started_at)
    if facts is None or facts.cfg.privacy is not None:  # more to read: a session
        return await db_threads.read(
            _deliver, services, site_id, model, inline=services.database.is_sqlite
        )
    _hand_out(services, task)
    assignment = task_crud.to_assignment(None, task=task, facts=facts)
    if _inline(model, assignment):
        body = services.model_cache.held(assignment.model_sha256)
        if body is None:  # not in memory yet: read from disk off the event loop
            sha, size = assignment.model_sha256, assignment.model_size
            body = await db_threads.run(services.model_cache.get, sha, size)
        if body is not None:
            return _with_model(services, assignment, body)
    return assignment, None


def _deliver(
    services: Services, site_id: str, model: bool
) -> tuple[TaskAssignment, bytes | None] | None:
    """``_find`` in one read session (SQLite, or a task that needs more than the cache)."""
    with services.database.read_session() as session:
        found = task_crud.next_task_for_site(session, site_id=site_id)
        if found is None:
            return None
        task, facts = found
        _hand_out(services, task)
        assignment = task_crud.to_assignment(session, task=task, facts=facts)
    if _inline(model, assignment):
        body = services.model_cache.get(assignment.model_sha256, assignment.model_size)
        if body is not None:
            return _with_model(services, assignment, body)
    return assignment, None


def _hand_out(services: Services, task: site_requests.OpenTask) -> None:
    if task.status == TaskStatus.ASSIGNED:  # written with others, off this request
        services.bookkeeping.delivered(task.id, utcnow())


def _with_model(
    services: Services, assignment: TaskAssignment, body: bytes
) -> tuple[TaskAssignment, bytes]:
    services.bookkeeping.served(assignment.task_id, len(body))
    return assignment, body


def _inline(model: bool, assignment: TaskAssignment) -> bool:
    return model and assignment.model_size <= INLINE_MODEL_MAX_BYTES


async def _woken(wake: asyncio.Future[None], timeout_s: float, receive: Receive) -> bool:
    """Wait for ``wake``: True when it is done; False after ``timeout_s``, or as soon as the
    site's connection closes (a long poll whose site left, a restarted agent or a proxy that
    cut the connection, would otherwise wait out its time and could be handed a task, and its
    model's bytes, that nobody receives).

    One task (the disconnect watch), a timer and a ``_Wait`` per wait: every site waits here
    between rounds, so what a wait holds is what the aggregator's memory grows by per site.
    """
    if wake.done():
        return True
    loop = asyncio.get_running_loop()
    waiting = _Wait(loop.create_future())
    wake.add_done_callback(waiting.woken)
    timer = loop.call_later(timeout_s, waiting.settle, False)
    gone = loop.create_task(_disconnected(receive))
    gone.add_done_callback(waiting.gone)
    try:
        return await waiting.outcome and not gone.done()
    finally:
        timer.cancel()
        wake.remove_done_callback(waiting.woken)
        gone.cancel()


class _Wait:
    """A poll's wait: settled once, by the wake-up, the timer or the site leaving."""

    __slots__ = ("outcome",)

    def __init__(self, outcome: asyncio.Future[bool]) -> None:
        self.outcome = outcome

    def settle(self, value: bool) -> None:
        if not self.outcome.done():
            self.outcome.set_result(value)

    def woken(self, _: object) -> None:
        self.settle(True)

    def gone(self, _: object) -> None:
        self.settle(False)


async def _disconnected(receive: Receive) -> None:
    """Return once the client's connection has closed (a GET's empty body is read past)."""
    while (await receive())["type"] != "http.disconnect":
        pass


@router.get("/{task_id}/model", response_class=FileResponse)
async def task_model(task_id: str, services: ServicesDep, site: CurrentSite) -> Response:
    """The global model this task trains from (float16 when the experiment asks).

    Every site of a round fetches the same blob: it is sent from memory (``BlobCache``), a
    very large one streamed from disk.
    """

    def find() -> tuple[bytes | None, Path | None, str, int]:  # reads only
        with services.database.read_session() as session:
            sha, size = site_requests.task_model(session, task_id=task_id, site_id=site.id)
            body = services.model_cache.get(sha, size)
            path = None if body is not None else services.blobs.require(sha)
            services.bookkeeping.served(task_id, size)  # written with others, off this request
            return body, path, sha, size

    body, path, sha256, size = await db_threads.read(find, inline=services.database.is_sqlite)
    _count_model_bytes(services, site.name, size)
    headers = {HEADER_SHA256: sha256}
    if path is not None:
        return FileResponse(path, media_type="application/octet-stream", headers=headers)
    return Response(body, media_type="application/octet-stream", headers=headers)


def _count_model_bytes(services: Services, site_name: str, size: int) -> None:
    services.metrics.bytes_out.labels(kind="task_model").inc(size)
    services.metrics.site_bytes_down.labels(site=site_name).inc(size)


@router.put(
    "/{task_id}/update",
    openapi_extra=BUNDLE_BODY,
    responses=UPLOAD_RESPONSES,
    response_model=UpdateReceipt,
)
async def upload_update(
    task_id: str, request: Request, services: ServicesDep, site: CurrentSite
) -> Response:
    """Upload the task's update (headers ``X-Content-SHA256``, ``X-Num-Samples``, ``X-Metrics``).

    The same body twice is recorded once (``duplicate: true``); a closed round answers 409.
    """
    metrics = services.metrics
    try:
        sha = sha256_header(request)
        num_samples = num_samples_header(request)
        site_metrics = metrics_header(request)
        length = content_length(request, limit=services.settings.max_upload_bytes)
        services.upload_slots.check()  # a full house answers 429 before any database work

        def prepare() -> intake.UpdateTarget | UpdateReceipt:
            with services.database.read_session() as session:
                return intake.prepare_update(
                    session, blobs=services.blobs, task_id=task_id, site_id=site.id, sha256=sha
                )

        target = await _prepare_on_loop(services, task_id=task_id, site_id=site.id, sha256=sha)
        if target is None:
            target = await db_threads.read(prepare, inline=services.database.is_sqlite)
        if isinstance(target, UpdateReceipt):
            metrics.updates.labels(outcome="duplicate").inc()
            return _json(target)
        staged = await receive_upload(
            request,
            services=services,
            site_key=site.id,
            length=length,
            sha256=sha,
            hold_bytes=HOLD_BYTES,  # accept_update's staged.finish() writes a small body
        )

        def accept() -> intake.UpdateOutcome:
            database = services.database
            at_once = not database.is_sqlite  # PostgreSQL: one statement, no transaction
            with database.read_session() if at_once else database.session() as session:
                done = intake.accept_update(
                    session,
                    blobs=services.blobs,
                    target=target,
                    staged=staged,
                    num_samples=num_samples,
                    metrics=site_metrics,
                    at_once=at_once,
                    reports=services.site_reports,  # a SQLite file: without the session
                )  # committed: durable before the site hears of it
            if done.receipt.duplicate or done.unreported:
                return done
            # The round's last report (None: a round without a progress row; the orchestrator
            # counts for itself): the round can close now, not at its deadline. On PostgreSQL
            # the report announced it (``ROUNDS_CHANNEL``) to every process, the leader among
            # them, and this one hears that too while its listener listens.
            heard = services.announcements is not None and services.announcements.listening.is_set()
            if done.unreported is None or not heard:
                services.orchestrator.wake()  # committed already: its own check sees it
            return done

        try:
            outcome = await db_threads.run(accept)
        finally:
            staged.discard()
    except InvalidRequestError as exc:
        metrics.rejects.labels(reason=exc.code).inc()
        raise
    except ConflictError:
        metrics.rejects.labels(reason="late").inc()
        raise
    metrics.bytes_in.labels(kind="update").inc(length)
    metrics.site_bytes_up.labels(site=site.name).inc(length)
    receipt = outcome.receipt
    if receipt.duplicate:
        metrics.updates.labels(outcome="duplicate").inc()
    elif receipt.accepted:
        metrics.updates.labels(outcome="accepted").inc()
    else:
        metrics.updates.labels(outcome="rejected").inc()
        metrics.rejects.labels(reason=outcome.reject_code or "policy").inc()
    return _json(receipt)


async def _prepare_on_loop(
    services: Services, *, task_id: str, site_id: str, sha256: str
) -> intake.UpdateTarget | UpdateReceipt | None:
    """``intake.prepare_update`` with its look-up on the event loop's own connection
    (``SiteReads``: PostgreSQL, or a SQLite file) when the rest is known in memory; None where
    it is not (an in-memory SQLite database; an experiment not cached here, or with privacy
    settings, whose checks read more rows): then the caller reads with a session.

    Raises:
        NotFoundError, ConflictError: as ``prepare_update``.
    """
    reads = services.async_reads
    if reads is None:
        return None
    row = await reads.one(site_requests.UPLOAD_CONTEXT, {"task_id": task_id})
    ctx = site_requests.upload_context_of(row, task_id=task_id, site_id=site_id)
    duplicate = intake.duplicate_receipt(ctx, sha256)
    if duplicate is not None:
        return duplicate
    site_requests.require_open(ctx)
    facts = cached_facts(experiment_id=ctx.experiment_id, started_at=ctx.started_at)
    if facts is None or facts.cfg.privacy is not None:
        return None
    return intake.update_target(
        ctx,
        site_id=site_id,
        facts=facts,
        norm_bound=facts.cfg.update_norm_bound,  # round_norm_bound without DP
        blobs=services.blobs,
    )


def _json(receipt: UpdateReceipt) -> Response:
    """The receipt as JSON, serialised once (returned as a ``Response``, FastAPI skips its own)."""
    return Response(receipt.model_dump_json(), media_type="application/json")


@router.post("/{task_id}/failure")
def report_failure(
    task_id: str, body: FailureReport, session: SessionDep, services: ServicesDep, site: CurrentSite
) -> TaskStatusPublic:
    """The site gives up this task (counts as reported for the round)."""
    result = intake.report_failure(session, task_id=task_id, site_id=site.id, reason=body.reason)
    services.orchestrator.wake()
    return TaskStatusPublic(task_id=task_id, status=result)


@router.put("/{task_id}/personal", openapi_extra=BUNDLE_BODY, responses=UPLOAD_RESPONSES)
async def share_personal(
    task_id: str, request: Request, services: ServicesDep, site: CurrentSite
) -> UpdateReceipt:
    """Share the site's personal model (a full bundle) for outside routing."""
    sha = sha256_header(request)
    length = content_length(request, limit=services.settings.max_upload_bytes)

    def prepare() -> intake.ModelTarget:
        with services.database.session() as session:
            return intake.prepare_personal(session, task_id=task_id, site_id=site.id)

    target = await run_in_threadpool(prepare)
    staged = await receive_upload(
        request,
        services=services,
        site_key=site.id,
        length=length,
        sha256=sha,
        hold_bytes=HOLD_BYTES,  # accept_personal's staged.finish() writes a small body
    )

    def accept() -> UpdateReceipt:
        with services.database.session() as session:
            return intake.accept_personal(session, target=target, staged=staged)

    try:
        receipt = await run_in_threadpool(accept)
    finally:
        staged.discard()
    services.metrics.bytes_in.labels(kind="personal").inc(length)
    return receipt
