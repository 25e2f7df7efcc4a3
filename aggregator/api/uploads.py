"""Streamed bundle uploads: headers checked first, body written to a staged blob chunk by chunk.

The body is never held whole in memory: each chunk is hashed and appended to a temp file in the
blob store, then fsynced. Nothing is recorded here; callers commit or discard the staged blob.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from aggregator.api.errors import UPLOAD_ERRORS, error_responses
from aggregator.errors import (
    InvalidRequestError,
    LengthRequiredError,
    PayloadTooLargeError,
    TooManyRequestsError,
    UnprocessableError,
)
from aggregator.storage.blobs import BlobStore, StagedBlob, is_sha256
from data_specs.constants import HEADER_METRICS, HEADER_NUM_SAMPLES, HEADER_SHA256
from data_specs.errors import BundleError
from data_specs.weights.bundle import MAX_NUM_SAMPLES
from data_specs.weights.safetensors_header import (
    DEFAULT_MAX_HEADER_BYTES,
    declared_header_length,
    loads_shallow,
)
from data_specs.wire import SiteMetrics

_PIPELINE_DEPTH = 16  # chunks (uvicorn hands over up to ~256 KiB each) queued for the writer
# A body this small is hashed as it arrives and written by the route's own worker-thread call
# (``StagedBlob.finish``): starting a writer thread per upload, and one hand-over per chunk,
# cost more than the writes. 4 MiB holds a 2D U-Net's update (1.6 MB); memory is bounded by
# ``max_concurrent_uploads`` (default 8) x 4 MiB.
HOLD_BYTES = 4 << 20

BUNDLE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "description": f"safetensors weights bundle; its sha256 (hex) in {HEADER_SHA256}",
    }
}
UPLOAD_RESPONSES = error_responses(*UPLOAD_ERRORS)
MAX_NUM_SAMPLES_HEADER = MAX_NUM_SAMPLES


def content_length(request: Request, *, limit: int) -> int:
    """The declared body size, checked against ``limit`` before anything is read.

    Raises:
        LengthRequiredError: no ``Content-Length``.
        PayloadTooLargeError: more than ``limit`` bytes.
    """
    raw = request.headers.get("content-length")
    if raw is None:
        raise LengthRequiredError("uploads need a Content-Length header", code="length_required")
    if not raw.strip().isdigit() or len(raw.strip()) > 18:
        raise InvalidRequestError(f"Content-Length must be an integer >= 0, got {raw[:40]!r}")
    length = int(raw)
    if length > limit:
        raise PayloadTooLargeError(
            f"body of {length} bytes exceeds the limit of {limit} bytes", code="too_large"
        )
    return length


def sha256_header(request: Request) -> str:
    """The ``X-Content-SHA256`` header (64 hex characters, case-insensitive)."""
    value = request.headers.get(HEADER_SHA256, "").strip().lower()
    if not is_sha256(value):
        raise InvalidRequestError(
            f"{HEADER_SHA256} must be the 64-hex sha256 of the body", code="sha256_header"
        )
    return value


def num_samples_header(request: Request) -> int:
    """The ``X-Num-Samples`` header, an integer in ``[1, MAX_NUM_SAMPLES_HEADER]``."""
    raw = request.headers.get(HEADER_NUM_SAMPLES)
    value = 0
    if raw is not None and raw.strip().isdigit() and len(raw.strip()) <= 12:
        value = int(raw)
    if not 1 <= value <= MAX_NUM_SAMPLES_HEADER:
        raise InvalidRequestError(
            f"{HEADER_NUM_SAMPLES} must be an integer in [1, {MAX_NUM_SAMPLES_HEADER}], "
            f"got {raw!r}"[:200],
            code="num_samples",
        )
    return value


def metrics_header(request: Request) -> SiteMetrics | None:
    """The optional ``X-Metrics`` header as ``SiteMetrics``.

    Raises:
        UnprocessableError: not JSON, or not a valid ``SiteMetrics``.
    """
    raw = request.headers.get(HEADER_METRICS)
    if raw is None or not raw.strip():
        return None
    try:
        loads_shallow(raw, max_depth=2, what=HEADER_METRICS)  # no NaN/Infinity, no deep nesting
    except BundleError as exc:
        raise UnprocessableError(f"{exc} (metrics must be finite)", code="metrics") from exc
    try:
        return SiteMetrics.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise UnprocessableError(
            f"{HEADER_METRICS} is not valid SiteMetrics JSON: {problems}", code="metrics"
        ) from exc
    except json.JSONDecodeError as exc:  # pragma: no cover - pydantic wraps this
        raise UnprocessableError(f"{HEADER_METRICS} is not JSON", code="metrics") from exc


async def receive_bundle(
    request: Request,
    *,
    blobs: BlobStore,
    length: int,
    sha256: str,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    chunk_timeout_s: float = 30.0,
    hold_bytes: int = 0,
) -> StagedBlob:
    """Stream the body into a staged blob and check its size and sha256.

    Hashing and writing run on a per-upload writer thread, pipelined with the event loop that
    keeps receiving (at most ``_PIPELINE_DEPTH`` chunks in flight, so memory stays bounded).
    A body of at most ``hold_bytes`` is hashed as it arrives and held in memory instead: no
    writer thread is started, and the caller's ``staged.finish()`` (on a worker thread, before
    it reads ``staged.path``) writes and fsyncs it. A body that grows past ``hold_bytes``
    continues through the writer thread as above.

    Args:
        request: the upload.
        blobs: where to stage it.
        length: the declared ``Content-Length``.
        sha256: the declared ``X-Content-SHA256``.
        max_header_bytes: the safetensors header cap, checked on the first 8 bytes (an
            oversized header is refused before the rest of the body is read). Default 1 MiB.
        chunk_timeout_s: longest wait for one chunk of the body. Default 30.
        hold_bytes: hold a body up to this size in memory (see above). Default 0: never.

    Returns:
        The staged blob, fsynced unless it was held; the caller commits or discards it.

    Raises:
        InvalidRequestError: body longer or shorter than declared, or a different sha256.
        PayloadTooLargeError: a safetensors header over ``max_header_bytes``.
    """
    loop = asyncio.get_running_loop()
    staged = blobs.stage()
    writer: ThreadPoolExecutor | None = None
    pending: deque[asyncio.Future[None]] = deque()
    received = 0
    prefix = b""
    try:
        try:
            async for chunk in _timed(request.stream(), chunk_timeout_s):
                if len(prefix) < 8:
                    prefix += chunk[: 8 - len(prefix)]
                    if len(prefix) == 8:
                        _check_header_length(prefix, max_header_bytes)
                received += len(chunk)
                if received > length:
                    raise InvalidRequestError(
                        f"body is longer than its Content-Length of {length} bytes",
                        code="truncated",
                    )
                if not chunk:
                    continue
                if writer is None and received <= hold_bytes:
                    staged.hold(chunk)
                    continue
                if writer is None:
                    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload-writer")
                pending.append(loop.run_in_executor(writer, staged.write, chunk))
                while len(pending) > _PIPELINE_DEPTH:
                    await pending.popleft()
        except ClientDisconnect as exc:
            raise InvalidRequestError(
                f"body truncated: connection closed after {received} of {length} bytes",
                code="truncated",
            ) from exc
        while pending:
            await pending.popleft()
        if received != length:
            raise InvalidRequestError(
                f"body truncated: got {received} of {length} bytes", code="truncated"
            )
        if writer is None:
            ref = staged.digest()  # held: written and fsynced by the caller's finish()
        else:
            ref = await loop.run_in_executor(writer, staged.finish)
        if ref.sha256 != sha256:
            raise InvalidRequestError(
                f"body sha256 is {ref.sha256}, {HEADER_SHA256} says {sha256}",
                code="sha256_mismatch",
            )
    except BaseException:
        # Let in-flight writes end before the file goes away.
        await asyncio.gather(*pending, return_exceptions=True)
        staged.discard()
        raise
    finally:
        if writer is not None:
            writer.shutdown(wait=False)
    return staged


async def _timed(chunks: AsyncIterator[bytes], timeout_s: float) -> AsyncIterator[bytes]:
    """The body's chunks, each awaited at most ``timeout_s`` seconds (the caller's work on a
    chunk does not count).

    One ``asyncio.timeout`` moved before each chunk, rather than ``asyncio.wait_for`` per
    chunk, which wrapped each wait in a task of its own: a 1.6 MB update arrives in about 25
    chunks.
    """
    iterator = aiter(chunks)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(None) as deadline:
            while True:
                deadline.reschedule(loop.time() + timeout_s)
                try:
                    chunk = await anext(iterator)
                except StopAsyncIteration:
                    return
                deadline.reschedule(None)  # not while the caller works on the chunk
                yield chunk
    except TimeoutError as exc:
        raise InvalidRequestError(
            f"body stalled: no data for {timeout_s:g} s", code="truncated"
        ) from exc


def _check_header_length(prefix: bytes, limit: int) -> None:
    length = declared_header_length(prefix)
    if length > limit:
        raise PayloadTooLargeError(
            f"upload refused: safetensors header of {length} bytes exceeds the limit of "
            f"{limit} bytes",
            code="header_too_large",
        )


async def receive_upload(
    request: Request,
    *,
    services: Any,
    site_key: str | None,
    length: int,
    sha256: str,
    hold_bytes: int = 0,
) -> StagedBlob:
    """``receive_bundle`` under the app's limits: upload rate per caller, concurrent uploads.

    Args:
        request: the upload.
        services: the app's services (blobs, settings, limiters).
        site_key: the rate-limit key of the caller (its id), None for no per-caller limit.
        length: the declared ``Content-Length``.
        sha256: the declared ``X-Content-SHA256``.
        hold_bytes: a body up to this size is held in memory until the caller's
            ``staged.finish()`` (``receive_bundle``). Default 0: never.

    Raises:
        TooManyRequestsError: the caller uploads too often, or no upload slot came free in
            time.
    """
    if site_key is not None and not services.upload_rate.hit(f"upload:{site_key}"):
        raise TooManyRequestsError(
            "too many uploads from this caller; retry shortly", retry_after_s=5.0
        )
    settings = services.settings
    async with services.upload_slots.take():
        return await receive_bundle(
            request,
            blobs=services.blobs,
            length=length,
            sha256=sha256,
            max_header_bytes=settings.max_header_bytes,
            chunk_timeout_s=settings.body_timeout_s,
            hold_bytes=hold_bytes,
        )
