"""The privacy guard: every request the agent sends is checked before it leaves the site.

Only weights and aggregate metrics may leave. The guard is an httpx request hook, so it sees
what actually goes on the wire (method, path, query, headers, body) and refuses anything else:

- routes: only the site routes of docs/architecture.md, with ``wait`` (a number) and
  ``model=1`` as the only query, on the poll;
- headers: httpx's own, ``Authorization``, ``Content-Type`` and the three fedseg headers;
  ``X-Metrics`` must parse as ``SiteMetrics`` (aggregates only, extra fields forbidden);
- JSON bodies: exactly an ``EnrollRequest``, a ``ConsentPolicy`` (consent), a
  ``DatasetFingerprint`` (aggregates only: extra fields forbidden, no free text), or a
  ``FailureReport`` whose reason is one of
  ``FailureReason`` (fixed texts, so no error message can carry a file name);
- secure aggregation: the key, share and unmask steps as exactly their JSON models (hex
  keys and ciphertexts only), polls without a body, and a masked ring vector of exactly the
  length registered for its task;
- bundle bodies: safetensors whose metadata keys are the bundle's own, whose tensor names
  are the task's state-dict keys (or a codec's ``<key>#<part>`` payload names) and whose
  tensor data fills the body exactly (nothing appended after the tensors).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from enum import StrEnum
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

from data_specs.constants import (
    API_PREFIX,
    HEADER_METRICS,
    HEADER_NUM_SAMPLES,
    HEADER_SHA256,
    META_CODEC,
    META_SPEC_HASH,
)
from data_specs.errors import BundleError
from data_specs.manifests.fingerprint import DatasetFingerprint
from data_specs.privacy.secagg_wire import KeysIn, SharesIn, UnmaskIn
from data_specs.weights.bundle import read_header
from data_specs.weights.safetensors_header import declared_header_length
from data_specs.wire import ConsentPolicy, EnrollRequest, FailureReport, SiteMetrics
from site_agent.errors import OutboundRefusedError


class FailureReason(StrEnum):
    """The only reasons a site ever sends in a ``FailureReport`` (no free text leaves the site)."""

    MODEL_INTEGRITY = "global model failed its sha256 check"
    SPEC_MISMATCH = "global model does not match the task spec"
    TRAINING_FAILED = "local training failed"
    STORAGE = "site could not write its work dir"
    REJECTED = "update was refused by the site's checks"


_POLL_WAIT = re.compile(r"\d{1,4}(?:\.\d{1,6})?")
_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
_P = re.escape(API_PREFIX)
_ROUTES: dict[tuple[str, str], re.Pattern[str]] = {
    ("POST", "enroll"): re.compile(rf"{_P}/sites/enroll"),
    ("GET", "next"): re.compile(rf"{_P}/tasks/next"),
    ("GET", "model"): re.compile(rf"{_P}/tasks/{_ID}/model"),
    ("PUT", "update"): re.compile(rf"{_P}/tasks/{_ID}/update"),
    ("POST", "failure"): re.compile(rf"{_P}/tasks/{_ID}/failure"),
    ("PUT", "personal"): re.compile(rf"{_P}/tasks/{_ID}/personal"),
    ("GET", "routing"): re.compile(rf"{_P}/experiments/{_ID}/routing-bundle"),
    ("PUT", "fingerprint"): re.compile(rf"{_P}/sites/me/fingerprint"),
    ("GET", "invitations"): re.compile(rf"{_P}/invitations"),
    ("POST", "decide"): re.compile(rf"{_P}/invitations/{_ID}/(approve|decline)"),
    ("PUT", "consent"): re.compile(rf"{_P}/sites/me/consent-policy"),
    # secure aggregation (data_specs.privacy.secagg_wire): polls, three JSON steps, masked vector
    ("GET", "secagg-poll"): re.compile(rf"{_P}/tasks/{_ID}/secagg/(keys|inbox|unmask)"),
    ("POST", "secagg-keys"): re.compile(rf"{_P}/tasks/{_ID}/secagg/keys"),
    ("POST", "secagg-shares"): re.compile(rf"{_P}/tasks/{_ID}/secagg/shares"),
    ("POST", "secagg-unmask"): re.compile(rf"{_P}/tasks/{_ID}/secagg/unmask"),
    ("PUT", "secagg-masked"): re.compile(rf"{_P}/tasks/({_ID})/secagg/masked"),
}
_SECAGG_JSON: dict[str, type[BaseModel]] = {
    "secagg-keys": KeysIn,
    "secagg-shares": SharesIn,
    "secagg-unmask": UnmaskIn,
}
_HTTPX_HEADERS = {"host", "accept", "accept-encoding", "connection", "user-agent", "content-length"}
_OUR_HEADERS = {"authorization", "content-type"}
_BUNDLE_HEADERS = {HEADER_SHA256.lower(), HEADER_NUM_SAMPLES.lower(), HEADER_METRICS.lower()}
_BUNDLE_META = {
    "fedseg_format",
    "spec_hash",
    "round",
    "kind",
    "num_samples",
    "codec",
    "codec_params",
    "wire_dtype",
}
_CODEC_PART = re.compile(r"[A-Za-z0-9_]{1,32}")
_SHA = re.compile(r"[0-9a-f]{64}")


class OutboundGuard:
    """Checks each outgoing request; install it on the agent's ``httpx.Client``.

    Args:
        (none.) Call ``allow_keys(spec_hash, keys)`` for each task spec before uploading
        its bundles; bundles of an unregistered spec are refused.

    Example:
        >>> guard = OutboundGuard()
        >>> guard.install(http_client)
        >>> guard.allow_keys(spec.spec_hash(), expected_tensors(spec))
    """

    def __init__(self) -> None:
        self._keys: dict[str, frozenset[str]] = {}
        self._ring: dict[str, int] = {}  # task id -> bytes of its masked vector

    def allow_ring(self, task_id: str, nbytes: int) -> None:
        """Let one masked ring vector of exactly ``nbytes`` go out for ``task_id``."""
        self._ring[task_id] = nbytes

    def allow_keys(self, spec_hash: str, keys: Collection[str]) -> None:
        """Register the state-dict keys a bundle of ``spec_hash`` may carry."""
        self._keys[spec_hash] = frozenset(keys)

    def install(self, http: httpx.Client) -> None:
        """Run ``check`` on every request ``http`` sends (idempotent)."""
        hooks = http.event_hooks
        if self.check not in hooks.get("request", []):
            hooks["request"] = [*hooks.get("request", []), self.check]
            http.event_hooks = hooks

    def check(self, request: httpx.Request) -> None:
        """Refuse the request unless it carries only what the contract allows.

        Raises:
            OutboundRefusedError: naming the rule broken (never the offending content).
        """
        route = self._route(request)
        headers = {k.lower() for k in request.headers}
        allowed = (
            _HTTPX_HEADERS
            | _OUR_HEADERS
            | (_BUNDLE_HEADERS if route in ("update", "personal", "secagg-masked") else set())
        )
        if extra := headers - allowed:
            raise OutboundRefusedError(f"refusing to send headers {sorted(extra)} on {route}")
        params = request.url.params
        if set(params) - ({"wait", "model"} if route == "next" else set()):
            raise OutboundRefusedError(f"refusing query parameters on {route}")
        if route == "next" and not (
            _POLL_WAIT.fullmatch(params.get("wait", "0")) and params.get("model", "1") == "1"
        ):
            raise OutboundRefusedError("refusing query values on next: a number and model=1 only")
        body = request.content
        if route in ("next", "model", "routing", "secagg-poll", "invitations", "decide"):
            if body:
                raise OutboundRefusedError(f"refusing a body on the {route} request")
        elif route in _SECAGG_JSON:
            _check_json(body, _SECAGG_JSON[route])
        elif route == "secagg-masked":
            self._check_ring(request)
        elif route == "enroll":
            _check_json(body, EnrollRequest)
        elif route == "fingerprint":
            _check_json(body, DatasetFingerprint)
        elif route == "consent":
            _check_json(body, ConsentPolicy)
        elif route == "failure":
            report = _check_json(body, FailureReport)
            if report.reason not in {r.value for r in FailureReason}:
                raise OutboundRefusedError("refusing a failure reason that is not a fixed text")
        else:
            self._check_bundle(body, personal=route == "personal")
            sha = request.headers.get(HEADER_SHA256, "")
            if not _SHA.fullmatch(sha):
                raise OutboundRefusedError(f"{HEADER_SHA256} must be a hex sha256")
            if route == "update":
                self._check_update_headers(request)

    # -- rules ------------------------------------------------------------------------------
    def _route(self, request: httpx.Request) -> str:
        for (method, name), pattern in _ROUTES.items():
            if request.method == method and pattern.fullmatch(request.url.path):
                return name
        raise OutboundRefusedError(
            f"refusing {request.method} to a route outside the site contract"
        )

    def _check_bundle(self, body: bytes, *, personal: bool) -> None:
        try:
            header = read_header(body)
        except BundleError as exc:
            raise OutboundRefusedError(
                f"refusing a body that is not a weights bundle: {exc}"
            ) from None
        meta = header.pop("__metadata__", None) or {}
        if set(meta) - _BUNDLE_META:
            raise OutboundRefusedError("refusing bundle metadata beyond the bundle's own fields")
        keys = self._keys.get(str(meta.get(META_SPEC_HASH)))
        if keys is None:
            raise OutboundRefusedError("refusing a bundle of a task spec no task asked for")
        coded = meta.get(META_CODEC, "none") != "none" and not personal
        end = 0
        for name, info in header.items():
            if not (name in keys or (coded and _is_codec_part(name, keys))):
                raise OutboundRefusedError(
                    "refusing a bundle with tensors that are not model weights"
                )
            try:
                end = max(end, int(info["data_offsets"][1]))
            except (KeyError, TypeError, ValueError, IndexError):
                raise OutboundRefusedError("refusing a malformed safetensors header") from None
        if 8 + declared_header_length(body) + end != len(body):
            raise OutboundRefusedError("refusing a bundle with bytes outside its tensors")

    def _check_ring(self, request: httpx.Request) -> None:
        match = _ROUTES[("PUT", "secagg-masked")].fullmatch(request.url.path)
        task_id = match.group(1) if match else ""
        if self._ring.get(task_id) != len(request.content):
            raise OutboundRefusedError(
                "refusing a masked vector whose length is not the one registered for its task"
            )
        if not _SHA.fullmatch(request.headers.get(HEADER_SHA256, "")):
            raise OutboundRefusedError(f"{HEADER_SHA256} must be a hex sha256")
        self._check_update_headers(request)

    def _check_update_headers(self, request: httpx.Request) -> None:
        samples = request.headers.get(HEADER_NUM_SAMPLES, "")
        if not samples.isdigit():
            raise OutboundRefusedError(f"{HEADER_NUM_SAMPLES} must be a whole number")
        metrics = request.headers.get(HEADER_METRICS)
        if metrics is not None:
            try:
                SiteMetrics.model_validate_json(metrics)
            except ValidationError:
                raise OutboundRefusedError(
                    f"{HEADER_METRICS} must be aggregate SiteMetrics only"
                ) from None


def _check_json(body: bytes, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate(json.loads(body))
    except (ValueError, ValidationError):
        raise OutboundRefusedError(f"refusing a JSON body that is not a {model.__name__}") from None


def _is_codec_part(name: str, keys: frozenset[str]) -> bool:
    # Codec payloads name their parts ``<state-dict key>#<part>`` (data_specs.update_codecs).
    base, sep, part = name.partition("#")
    return bool(sep) and base in keys and _CODEC_PART.fullmatch(part) is not None
