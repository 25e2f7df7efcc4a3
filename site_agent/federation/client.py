"""The aggregator's site routes over HTTP, with retries, integrity checks and the privacy guard.

``AggregatorClient`` takes any ``httpx.Client`` whose ``base_url`` is the aggregator: a real
one (``make_http_client``) or FastAPI's in-memory ``TestClient``.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import SecretStr, ValidationError
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
)

from data_specs.constants import (
    API_PREFIX,
    HEADER_METRICS,
    HEADER_NUM_SAMPLES,
    HEADER_SHA256,
    HEADER_TASK_BYTES,
    MEDIA_TASK_AND_MODEL,
)
from data_specs.manifests.fingerprint import DatasetFingerprint
from data_specs.wire import (
    ConsentPolicy,
    EnrollRequest,
    EnrollResponse,
    FailureReport,
    SiteMetrics,
    TaskAssignment,
    UpdateReceipt,
)
from site_agent.errors import (
    AggregatorError,
    AggregatorUnavailableError,
    EnrollmentError,
    IntegrityError,
    RoundClosedError,
    SiteSettingsError,
    TaskRefusedError,
    TLSVerificationError,
    TokenRevokedError,
)
from site_agent.federation.held_body import HeldTail
from site_agent.federation.privacy import FailureReason, OutboundGuard
from site_agent.federation.retry import Backoff
from site_agent.federation.workdir import WorkDir, safe_id
from site_agent.settings import SiteSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
_CHUNK = 1 << 20
_BUNDLE = "application/octet-stream"


class _Retryable(Exception):
    """A network error or a 5xx / 429: worth another try."""


def _transport_failure(exc: httpx.TransportError, what: str) -> Exception:
    """A retryable network error, or a TLS verification failure that no retry can mend."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return TLSVerificationError(
                f"{what}: the aggregator's TLS certificate did not verify ({cause.verify_message}); "
                "check FEDSEG_SITE_CA_BUNDLE and the aggregator URL's host name"
            )
        cause = cause.__cause__ or cause.__context__
    return _Retryable(f"{what}: {type(exc).__name__}")


def make_http_client(settings: SiteSettings) -> httpx.Client:
    """A real ``httpx.Client`` for the configured aggregator (TLS, timeouts).

    TLS trusts the system store plus ``FEDSEG_SITE_CA_BUNDLE`` (``site_agent.federation.trust``).

    Args:
        settings: validated site settings with an aggregator URL.
    """
    from site_agent.federation.trust import agent_ssl_context

    url = settings.require_aggregator()
    verify: ssl.SSLContext | bool = False  # a plain http:// URL (development) has no TLS at all
    if not url.lower().startswith("http://"):  # loading the trust store costs ~20 ms of CPU
        try:
            verify = agent_ssl_context(
                settings.ca_bundle, client_cert=settings.client_cert, client_key=settings.client_key
            )
        except (OSError, ssl.SSLError) as exc:
            raise SiteSettingsError(
                "cannot load the TLS files (FEDSEG_SITE_CA_BUNDLE, FEDSEG_SITE_CLIENT_CERT, "
                f"FEDSEG_SITE_CLIENT_KEY): {type(exc).__name__}"
            ) from exc
    timeout = httpx.Timeout(
        settings.request_timeout_s, connect=min(settings.request_timeout_s, 15.0)
    )
    return httpx.Client(base_url=url, verify=verify, timeout=timeout)


class AggregatorClient:
    """Site-side calls of docs/architecture.md.

    Args:
        http: an ``httpx.Client`` whose ``base_url`` is the aggregator. Example:
            ``make_http_client(settings)`` or ``fastapi.testclient.TestClient(app)``.
        backoff: retry policy for network errors and 5xx. Default ``Backoff()``.
        token: the site token. Default None (set it with ``set_token`` after enrolling).
        guard: the privacy guard installed on ``http``. Default a new ``OutboundGuard``.
        long_poll_margin_s: read timeout beyond the long-poll wait. Default 30.
    """

    def __init__(
        self,
        http: httpx.Client,
        *,
        backoff: Backoff | None = None,
        token: SecretStr | None = None,
        guard: OutboundGuard | None = None,
        long_poll_margin_s: float = 30.0,
    ) -> None:
        self.http = http
        self.backoff = backoff or Backoff()
        self.guard = guard or OutboundGuard()
        self.guard.install(http)
        self._token = token
        self._margin = long_poll_margin_s
        # (task id, announced sha256, bytes) of the model sent with the last task polled
        self._prefetched: tuple[str, str, memoryview] | None = None

    def set_token(self, token: SecretStr) -> None:
        """Use ``token`` for every later request."""
        self._token = token

    def _take_prefetched(self, task: TaskAssignment) -> memoryview | None:
        """The model bytes sent with ``task``'s assignment, once (None if there were none)."""
        held, self._prefetched = self._prefetched, None
        if held is None or held[0] != task.task_id or held[1] != task.model_sha256.lower():
            return None
        return held[2]

    # -- routes ---------------------------------------------------------------------------
    def enroll(
        self,
        enrollment_token: SecretStr,
        *,
        accept_experiments: list[str] | None = None,
        max_samples: int | None = None,
    ) -> EnrollResponse:
        """Exchange the one-time enrollment token for a site token.

        Args:
            enrollment_token: the one-time token.
            accept_experiments: the hospital's standing consent, sent with the enrollment.
            max_samples: the most training cases the site will train on (its sample-count
                cap). Default None (none declared).

        Raises:
            EnrollmentError: the aggregator refused the enrollment token.
        """
        body = EnrollRequest(
            enrollment_token=enrollment_token.get_secret_value(),
            accept_experiments=accept_experiments,
            max_samples=max_samples,
        )
        try:
            resp = self._call("POST", "/sites/enroll", "enroll", auth=False, json=body.model_dump())
        except (TokenRevokedError, TaskRefusedError) as exc:
            raise EnrollmentError(f"the aggregator refused the enrollment token: {exc}") from exc
        return _parse(EnrollResponse, resp, "enrollment")

    def set_consent_policy(self, accept: list[str]) -> None:
        """Send the hospital's standing consent (``accept_experiments``) to the aggregator."""
        body = ConsentPolicy(accept=accept)
        self._call("PUT", "/sites/me/consent-policy", "consent", json=body.model_dump())

    def invitations(self) -> list[dict[str, Any]]:
        """Experiments that may sample this site, with what they run and the site's decision."""
        resp = self._call("GET", "/invitations", "invitations")
        return list(resp.json())

    def decide(self, experiment_id: str, *, approve: bool) -> dict[str, Any]:
        """Approve (or decline) an experiment before it starts."""
        action = "approve" if approve else "decline"
        resp = self._call("POST", f"/invitations/{experiment_id}/{action}", action)
        return dict(resp.json())

    def next_task(self, wait_s: int) -> TaskAssignment | None:
        """Long-poll for work: a task, or None when none came within ``wait_s`` seconds.

        The aggregator is asked to send the task's global model in the same answer; when it
        does, ``download_model`` writes those bytes instead of fetching them again. An
        aggregator that answers with the assignment alone (a large model, an older release)
        is served as before.
        """
        timeout = httpx.Timeout(wait_s + self._margin, connect=15.0)
        params = {"wait": wait_s, "model": 1}
        resp = self._call("GET", "/tasks/next", "poll", params=params, timeout=timeout)
        self._prefetched = None
        if resp.status_code == 204:
            return None
        if not resp.headers.get("content-type", "").startswith(MEDIA_TASK_AND_MODEL):
            return _parse(TaskAssignment, resp, "task assignment")
        body = resp.content
        try:
            split = int(resp.headers.get(HEADER_TASK_BYTES, ""))
        except ValueError:
            split = -1
        if not 0 < split <= len(body):
            raise AggregatorError(f"the aggregator's task and model: a bad {HEADER_TASK_BYTES}")
        task = _parse_bytes(TaskAssignment, body[:split], "task assignment")
        announced = resp.headers.get(HEADER_SHA256, "").lower()
        self._prefetched = (task.task_id, announced, memoryview(body)[split:])
        return task

    def download_model(
        self, task: TaskAssignment, dest: Path, workdir: WorkDir, *, durable: bool = True
    ) -> str:
        """Stream the task's global model to ``dest`` (atomically) and verify its sha256.

        The digest must equal both the ``X-Content-SHA256`` header and the assignment's
        ``model_sha256``; otherwise nothing is left at ``dest``.

        Args:
            task: the task whose model is fetched.
            dest: the file to write.
            workdir: the work dir (error messages, folder creation).
            durable: fsync the file and its folder. Default True. False for a file whose
                reader re-checks it against ``task.model_sha256`` after a restart.

        Returns:
            The verified sha256 (hex).

        Raises:
            IntegrityError: a digest mismatch (after the retries).
            WorkDirError: the disk is full.
        """
        sent = self._take_prefetched(task)
        if sent is not None:
            got = hashlib.sha256(sent).hexdigest()
            if got == task.model_sha256.lower():
                with workdir.open_atomic(dest, durable=durable) as fh:
                    fh.write(sent)
                return got
            log.warning(
                "task %s: the model sent with the task does not match its sha256; downloading it",
                task.task_id,
            )
        path = f"/tasks/{safe_id(task.task_id)}/model"

        def attempt() -> str:
            with self._stream("GET", path) as resp:
                announced = resp.headers.get(HEADER_SHA256, "").lower()
                digest = hashlib.sha256()
                with workdir.open_atomic(dest, durable=durable) as fh:
                    try:
                        for chunk in resp.iter_bytes(_CHUNK):
                            digest.update(chunk)
                            fh.write(chunk)
                    except httpx.TransportError as exc:  # cut mid-body: the temp file goes
                        raise _Retryable(f"download: {type(exc).__name__}") from exc
                    got = digest.hexdigest()
                    if got != announced or got != task.model_sha256.lower():
                        raise IntegrityError(
                            f"global model: sha256 {got[:12]}… does not "
                            f"match the announced {announced[:12] or 'none'}… / assignment "
                            f"{task.model_sha256[:12]}…; the download was discarded"
                        )
            return got

        return self._retry(attempt, "download")

    def upload_update(
        self,
        task_id: str,
        body: bytes,
        *,
        sha256: str,
        num_samples: int,
        metrics: SiteMetrics,
        ready: Callable[[], None] | None = None,
    ) -> UpdateReceipt:
        """Upload the update bundle; the same bytes twice are accepted once by the server.

        Args:
            task_id: the task.
            body: the update bundle.
            sha256: its sha256 (hex).
            num_samples: training samples behind it.
            metrics: aggregate metrics sent with it.
            ready: called before the body's last bytes are sent, which wait for it to return
                (``held_body.HeldTail``): the server cannot hold the update before it does. An
                exception from it aborts the request and is raised here. Default None.

        Raises:
            RoundClosedError: 409, the round closed.
            TaskRefusedError: another 4xx.
        """
        headers = {
            HEADER_SHA256: sha256,
            HEADER_NUM_SAMPLES: str(num_samples),
            HEADER_METRICS: metrics.model_dump_json(exclude_none=True),
            "Content-Type": _BUNDLE,
        }
        resp = self._call(
            "PUT",
            f"/tasks/{safe_id(task_id)}/update",
            "upload",
            content=body,
            headers=headers,
            hold_tail=ready,
        )
        return _parse(UpdateReceipt, resp, "update receipt")

    def report_failure(self, task_id: str, reason: FailureReason) -> None:
        """Tell the aggregator this site gives up the task (a fixed reason text only)."""
        body = FailureReport(reason=reason.value).model_dump()
        self._call("POST", f"/tasks/{safe_id(task_id)}/failure", "failure report", json=body)

    def share_personal(self, task_id: str, body: bytes, *, sha256: str) -> None:
        """Share the personal model for outside routing (opt-in)."""
        headers = {HEADER_SHA256: sha256, "Content-Type": _BUNDLE}
        self._call(
            "PUT",
            f"/tasks/{safe_id(task_id)}/personal",
            "personal model",
            content=body,
            headers=headers,
        )

    def send_fingerprint(self, fingerprint: DatasetFingerprint) -> None:
        """Send the site's dataset fingerprint (aggregates only) for ``plan: auto``."""
        self._call(
            "PUT", "/sites/me/fingerprint", "fingerprint", json=fingerprint.model_dump(mode="json")
        )

    def routing_bundle(self, experiment_id: str) -> bytes:
        """Download the routing bundle of an experiment this site was granted."""
        path = f"/experiments/{safe_id(experiment_id)}/routing-bundle"
        resp = self._call("GET", path, "routing bundle")
        announced = resp.headers.get(HEADER_SHA256)
        if announced and hashlib.sha256(resp.content).hexdigest() != announced.lower():
            raise IntegrityError("routing bundle: sha256 does not match the announced one")
        return resp.content

    # -- plumbing -------------------------------------------------------------------------
    def _headers(self, auth: bool) -> dict[str, str]:
        if not auth:
            return {}
        if self._token is None:
            raise TokenRevokedError("no site token: enroll first (fedseg site enroll)")
        return {"Authorization": f"Bearer {self._token.get_secret_value()}"}

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        auth: bool = True,
        hold_tail: Callable[[], None] | None = None,
        **kwargs: object,
    ) -> httpx.Response:
        headers = {**self._headers(auth), **kwargs.pop("headers", {})}  # type: ignore[dict-item]

        def attempt() -> httpx.Response:
            try:
                if hold_tail is None:
                    resp = self.http.request(method, API_PREFIX + path, headers=headers, **kwargs)  # type: ignore[arg-type]
                else:  # the same request; hooks (the privacy guard) still read its whole body
                    request = self.http.build_request(
                        method,
                        API_PREFIX + path,
                        headers=headers,
                        **kwargs,  # type: ignore[arg-type]
                    )
                    request.stream = HeldTail(request.content, hold_tail)
                    resp = self.http.send(request)
            except httpx.TransportError as exc:
                raise _transport_failure(exc, what) from exc
            _raise_for_status(resp, what)
            return resp

        return self._retry(attempt, what)

    def _stream(self, method: str, path: str) -> _Stream:
        return _Stream(self.http, method, API_PREFIX + path, self._headers(True))

    def _retry(self, attempt: Callable[[], T], what: str) -> T:
        """``attempt()`` with the backoff policy on network errors and 5xx / 429, and one more
        download (no pause) after a sha256 mismatch."""

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                "%s failed (%s); retry %d in %.1f s", what, exc, state.attempt_number, delay
            )

        def transient() -> T:
            try:
                return self.backoff.retrying(_Retryable, before_sleep=log_retry)(attempt)
            except RetryError as err:
                exc = err.last_attempt.exception()
                raise AggregatorUnavailableError(
                    f"aggregator unavailable: {what} failed {err.last_attempt.attempt_number} "
                    f"times ({exc}); check the URL, the network and the aggregator's health"
                ) from exc

        def log_corrupt(_: RetryCallState) -> None:
            log.warning("%s failed its sha256 check; downloading once more", what)

        corrupt = Retrying(
            stop=stop_after_attempt(2),
            retry=retry_if_exception_type(IntegrityError),
            before_sleep=log_corrupt,
            sleep=lambda _: None,
            reraise=True,
        )
        return corrupt(transient)


class _Stream:
    """Context manager: a streamed response with status checks and transport errors retryable."""

    def __init__(self, http: httpx.Client, method: str, url: str, headers: dict[str, str]) -> None:
        self._cm = http.stream(method, url, headers=headers)

    def __enter__(self) -> httpx.Response:
        try:
            resp = self._cm.__enter__()
        except httpx.TransportError as exc:
            raise _transport_failure(exc, "download") from exc
        try:
            if resp.status_code >= 400:
                resp.read()
            _raise_for_status(resp, "download")
        except BaseException:
            self._cm.__exit__(None, None, None)
            raise
        return resp

    def __exit__(self, *exc: object) -> None:
        try:
            self._cm.__exit__(*exc)  # type: ignore[arg-type]
        except httpx.TransportError as err:
            raise _Retryable(f"download: {type(err).__name__}") from err


def _raise_for_status(resp: httpx.Response, what: str) -> None:
    code = resp.status_code
    if code < 400:
        return
    detail = _detail(resp)
    if code >= 500 or code == 429:
        raise _Retryable(f"{what}: HTTP {code}")
    if code == 401:
        raise TokenRevokedError(
            f"{what}: the aggregator answered 401: the site token is revoked or unknown; "
            "ask the researcher for a new enrollment token and run `fedseg site enroll`"
        )
    if code == 409:
        raise RoundClosedError(f"{what}: the round is closed (409){detail}")
    raise TaskRefusedError(f"{what}: the aggregator refused the request (HTTP {code}){detail}")


def _detail(resp: httpx.Response) -> str:
    try:
        detail = resp.json().get("detail")
    except (ValueError, AttributeError):
        return ""
    return f": {str(detail)[:200]}" if detail else ""


def _parse(model: type[T], resp: httpx.Response, what: str) -> T:
    return _parse_bytes(model, resp.content, what)


def _parse_bytes(model: type[T], data: bytes, what: str) -> T:
    try:
        return model.model_validate_json(data)  # type: ignore[attr-defined, no-any-return]
    except ValidationError as exc:
        raise AggregatorError(
            f"the aggregator's {what} is malformed ({exc.error_count()} problems)"
        ) from None
