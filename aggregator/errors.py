"""The one exception tree of the aggregator; mapped to HTTP status codes only at the API edge.

Every message says what was expected and what was received, and never carries a token, file
contents or patient data.
"""

from __future__ import annotations

from typing import TypeVar

_Row = TypeVar("_Row")


class AggregatorError(Exception):
    """Base class of every error the aggregator raises on purpose."""


class NotFoundError(AggregatorError):
    """An experiment, round, task, site or model does not exist (or is not the caller's)."""


class AuthenticationError(AggregatorError):
    """No bearer token, or a token that matches no principal allowed on the route."""


class PermissionDeniedError(AggregatorError):
    """A known principal acting outside its rights (a researcher token on a site route)."""


class ConflictError(AggregatorError):
    """The request does not fit the current state: a closed round, a started experiment, a name in use."""


class InvalidRequestError(AggregatorError):
    """A malformed request: bad header, body that is not a bundle, wrong sha256.

    Args:
        message: what was expected and what was received.
        code: short machine label for metrics (``sha256_mismatch``, ``spec_mismatch``...).
    """

    def __init__(self, message: str, *, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code


class UnprocessableError(InvalidRequestError):
    """Well-formed JSON or headers whose values make no sense (unknown site ids, bad metrics)."""


class LengthRequiredError(InvalidRequestError):
    """An upload without ``Content-Length``."""


class PayloadTooLargeError(InvalidRequestError):
    """An upload larger than ``max_upload_bytes``."""


class TooManyRequestsError(AggregatorError):
    """Too many failed logins, uploads or concurrent uploads from one token or address.

    Args:
        message: what limit was hit.
        retry_after_s: seconds after which a retry may succeed.
    """

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StorageError(AggregatorError):
    """The blob store holds a file whose sha256 is not its name, or misses a referenced blob."""


class AggregationError(AggregatorError):
    """A round's updates could not be aggregated (strategy refused them)."""


class InvariantError(AggregatorError):
    """A row the round state machine has just read or claimed is gone: a broken invariant.

    Raised instead of ``assert`` (which ``python -O`` removes); the step that meets it ends with
    this error logged and retried by the orchestrator's failure handling.
    """


def require_row(row: _Row | None, what: str) -> _Row:
    """``row``, or ``InvariantError`` when a row just read or claimed is gone (not ``assert``).

    Args:
        row: the result of ``session.get`` or a query. Example: ``session.get(Round, round_id)``.
        what: names the row in the message. Example: ``"round"``.
    """
    if row is None:
        raise InvariantError(f"{what} vanished while it was being used")
    return row
