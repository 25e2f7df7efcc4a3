"""``/tasks/{id}/secagg/...``: the four steps of secure aggregation for the calling site's task.

Polling routes answer 204 until their step closes. The masked vector is raw ring elements
(``application/x-fedseg-ring``) with ``X-Content-SHA256``, ``X-Num-Samples`` and optional
``X-Metrics``, like an update; it is added to the round's running sum and not kept.
"""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from aggregator.api.deps import CurrentSite, ServicesDep, SessionDep
from aggregator.api.uploads import content_length, metrics_header, num_samples_header, sha256_header
from aggregator.errors import InvalidRequestError
from aggregator.privacy import secagg_protocol as protocol
from data_specs.privacy.secagg_wire import AdvertsOut, KeysIn, SharesIn, UnmaskIn, UnmaskOut
from data_specs.wire import UpdateReceipt

router = APIRouter(prefix="/tasks/{task_id}/secagg", tags=["secure aggregation"])
_NOT_YET: dict[int | str, dict[str, Any]] = {204: {"description": "the step is still open"}}


@router.post("/keys", status_code=status.HTTP_204_NO_CONTENT)
def post_keys(task_id: str, body: KeysIn, session: SessionDep, site: CurrentSite) -> None:
    """Step 1: this site's two X25519 public keys for the round."""
    protocol.post_keys(session, task_id=task_id, site_id=site.id, keys=body)


@router.get("/keys", responses=_NOT_YET, response_model=None)
def get_keys(task_id: str, session: SessionDep, site: CurrentSite) -> AdvertsOut | Response:
    """Every site's keys once the key step closed."""
    out = protocol.get_adverts(session, task_id=task_id, site_id=site.id)
    return Response(status_code=204) if out is None else out


@router.post("/shares", status_code=status.HTTP_204_NO_CONTENT)
def post_shares(task_id: str, body: SharesIn, session: SessionDep, site: CurrentSite) -> None:
    """Step 2: encrypted Shamir shares for this site's neighbours (relayed, never read)."""
    protocol.post_shares(session, task_id=task_id, site_id=site.id, shares=body)


@router.get("/inbox", responses=_NOT_YET, response_model=None)
def get_inbox(task_id: str, session: SessionDep, site: CurrentSite) -> SharesIn | Response:
    """The shares other sites sent this site, once the share step closed."""
    out = protocol.get_inbox(session, task_id=task_id, site_id=site.id)
    return Response(status_code=204) if out is None else out


@router.put("/masked")
async def put_masked(
    task_id: str, request: Request, services: ServicesDep, site: CurrentSite
) -> UpdateReceipt:
    """Step 3: the masked ring vector; the task counts as an accepted update."""
    sha = sha256_header(request)
    num_samples = num_samples_header(request)
    metrics = metrics_header(request)
    content_length(request, limit=services.settings.max_upload_bytes)
    body = await request.body()
    if hashlib.sha256(body).hexdigest() != sha:
        raise InvalidRequestError("the masked vector does not match its X-Content-SHA256")

    def accept() -> UpdateReceipt:
        with services.database.session() as session:
            return protocol.put_masked(
                session,
                blobs=services.blobs,
                task_id=task_id,
                site_id=site.id,
                body=body,
                sha256=sha,
                num_samples=num_samples,
                metrics=metrics,
            )

    receipt = await run_in_threadpool(accept)
    services.orchestrator.wake()
    return receipt


@router.get("/unmask", responses=_NOT_YET, response_model=None)
def get_unmask(task_id: str, session: SessionDep, site: CurrentSite) -> UnmaskOut | Response:
    """Step 4 request, once the round stopped taking uploads."""
    out = protocol.get_unmask(session, task_id=task_id, site_id=site.id)
    return Response(status_code=204) if out is None else out


@router.post("/unmask", status_code=status.HTTP_204_NO_CONTENT)
def post_unmask(
    task_id: str, body: UnmaskIn, session: SessionDep, services: ServicesDep, site: CurrentSite
) -> None:
    """Step 4 answer: shares of neighbours' self-mask seeds (survivors) or keys (dropped)."""
    protocol.post_unmask(session, task_id=task_id, site_id=site.id, answer=body)
    services.orchestrator.wake()
