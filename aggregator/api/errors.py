"""Maps the aggregator's exception tree to HTTP status codes, as JSON ``{"detail": "..."}``.

Every error, including FastAPI's request validation errors, answers the one error model
``ErrorPublic``; the validation message never echoes the input (a NaN in the input would make the
answer itself non-JSON), and every route declares these responses in the OpenAPI document.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from aggregator.errors import (
    AggregationError,
    AggregatorError,
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    LengthRequiredError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    StorageError,
    TooManyRequestsError,
    UnprocessableError,
)

# Most specific first: subclasses before their bases.
STATUS_CODES: tuple[tuple[type[AggregatorError], int], ...] = (
    (NotFoundError, 404),
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (ConflictError, 409),
    (LengthRequiredError, 411),
    (PayloadTooLargeError, 413),
    (UnprocessableError, 422),
    (InvalidRequestError, 400),
    (TooManyRequestsError, 429),
    (StorageError, 500),
    (AggregationError, 500),
)


class ErrorPublic(BaseModel):
    """Every error answer: one line saying what was expected and what was received."""

    detail: str


_DESCRIPTIONS = {
    400: "malformed request (bad header, not a bundle, wrong sha256)",
    401: "missing, invalid, expired or revoked token",
    403: "a known principal acting outside its rights",
    404: "no such resource (or not the caller's)",
    409: "the request does not fit the current state",
    411: "upload without Content-Length",
    413: "body or header over its size limit",
    422: "well-formed request whose values are out of bounds",
    429: "rate or concurrency limit hit; see Retry-After",
}
COMMON_ERRORS = (400, 401, 403, 404, 409, 422, 429)
UPLOAD_ERRORS = (411, 413)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given status codes, all with ``ErrorPublic``."""
    return {code: {"model": ErrorPublic, "description": _DESCRIPTIONS[code]} for code in codes}


def status_for(exc: AggregatorError) -> int:
    """The HTTP status of an aggregator error (500 for anything unmapped)."""
    for kind, status in STATUS_CODES:
        if isinstance(exc, kind):
            return status
    return 500


async def aggregator_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Turn an ``AggregatorError`` into ``{"detail": message}`` with its status."""
    assert isinstance(exc, AggregatorError)
    status = status_for(exc)
    headers = None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(exc, TooManyRequestsError):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    # Never echo internals of a server-side fault beyond its message.
    return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)


def validation_message(exc: RequestValidationError) -> str:
    """One line naming each invalid field and why, without the values sent."""
    parts = []
    for error in exc.errors()[:8]:
        loc = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{loc or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)[:2000] or "invalid request"


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's request validation errors as ``ErrorPublic`` (422), inputs never echoed."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": validation_message(exc)}, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping on an app."""
    app.add_exception_handler(AggregatorError, aggregator_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
