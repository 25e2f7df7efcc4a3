"""The one exception tree of the site agent: every refusal or failure here is a SiteAgentError.

```
SiteAgentError
├── SiteSettingsError          settings are missing or unsafe (plain HTTP, missing CA bundle)
├── ManifestRejectedError      the local dataset manifest fails validation (carries the report)
├── WorkDirError               the work dir cannot be written (full disk, permissions)
├── TrainingError              local training cannot run (empty split, non-finite loss)
├── ModelMismatchError         weights of another task spec, or a file that is no model
├── ScanError                  a scan to segment is unreadable or has the wrong channel count
├── OutboundRefusedError       the privacy guard stopped a request carrying more than weights
└── AggregatorError            anything the aggregator answered or failed to answer
    ├── AggregatorUnavailableError   network errors or 5xx after every retry
    ├── TokenRevokedError            401: the site token was revoked or never valid
    ├── EnrollmentError              the enrollment token was refused
    ├── RoundClosedError             409: the round closed before the upload
    ├── TaskRefusedError             another 4xx for one task (gone, not ours, rejected)
    └── IntegrityError               a download whose sha256 differs from the one announced
```

Messages say what was expected and what was received; they never carry tokens, file contents,
scan file names or patient data.
"""

from __future__ import annotations


class SiteAgentError(Exception):
    """Base class of every error raised by the site agent."""


class SiteSettingsError(SiteAgentError):
    """Settings are missing, malformed or unsafe (plain HTTP without the development opt-in)."""


class ManifestRejectedError(SiteAgentError):
    """The local dataset manifest failed validation; ``report`` is the human-readable report.

    Args:
        message: one-line summary.
        report: the validation report to print. Default ``""``.
    """

    def __init__(self, message: str, report: str = "") -> None:
        super().__init__(message)
        self.report = report


class WorkDirError(SiteAgentError):
    """A file of the work dir could not be written or read (full disk, permissions, corruption)."""


class TrainingError(SiteAgentError):
    """Local training or evaluation cannot run: empty split, non-finite loss, bad config."""


class ModelMismatchError(SiteAgentError):
    """Weights belong to another task spec, or a file is not a fedseg model at all."""


class ScanError(SiteAgentError):
    """A scan is unreadable, of an unsupported format, or has the wrong number of channels."""


class OutboundRefusedError(SiteAgentError):
    """The privacy guard refused to send a request: only weights and aggregate metrics may leave."""


class AggregatorError(SiteAgentError):
    """The aggregator refused a request or could not be reached."""


class AggregatorUnavailableError(AggregatorError):
    """Network errors or server errors (5xx) persisted through every retry."""


class TLSVerificationError(AggregatorError):
    """The aggregator's certificate did not verify against the configured CA: never retried."""


class TokenRevokedError(AggregatorError):
    """The aggregator answered 401: the site token is revoked or unknown. Re-enroll to go on."""


class EnrollmentError(AggregatorError):
    """The aggregator refused the enrollment token (unknown, used, or expired)."""


class RoundClosedError(AggregatorError):
    """The aggregator answered 409: the task's round closed; the task is dropped."""


class TaskRefusedError(AggregatorError):
    """Another 4xx for one task (not found, not this site's, update rejected as malformed)."""


class IntegrityError(AggregatorError):
    """A downloaded body's sha256 differs from ``X-Content-SHA256`` or the assignment."""
