"""Maps the aggregator's exception tree to HTTP status codes, as JSON ``{"detail": ...}``."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

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
    (StorageError, 500),
    (AggregationError, 500),
)


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
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    # Never echo internals of a server-side fault beyond its message.
    return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping on an app."""
    app.add_exception_handler(AggregatorError, aggregator_error_handler)
