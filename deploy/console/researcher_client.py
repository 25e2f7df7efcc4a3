"""A typed researcher's client of the aggregator REST API (used by the demo, simulations and benchmarks)."""

from __future__ import annotations

from typing import Any

import httpx

from data_specs.constants import API_PREFIX, HEADER_SHA256
from data_specs.polling import poll_until
from data_specs.researcher.experiments import ExperimentCreate, ExperimentPublic
from data_specs.researcher.principals import ResearcherCreated, SitePublic, SiteRegistered
from data_specs.researcher.rounds import RoundPublic
from data_specs.weights.bundle import sha256_hex

TERMINAL_STATUSES = frozenset({"completed", "failed", "aborted"})


class ResearcherApiError(RuntimeError):
    """The aggregator refused a researcher's request; the message carries its reason.

    Args:
        message: what was asked and why it was refused.
        status_code: the HTTP status, or None when no answer came back. Default None.
    """

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ResearcherClient:
    """Researcher (and admin) calls over an ``httpx.Client``.

    Args:
        http: a client whose ``base_url`` is the aggregator (a real client, or FastAPI's
            ``TestClient`` for an in-memory aggregator).
        token: the researcher's bearer token. Default None (set later with ``use_token``).
    """

    def __init__(self, http: httpx.Client, token: str | None = None) -> None:
        self.http = http
        self._token = token

    @property
    def token(self) -> str | None:
        """The bearer token this client sends."""
        return self._token

    def use_token(self, token: str) -> None:
        """Send ``token`` as the bearer token from now on."""
        self._token = token

    def create_researcher(self, admin_token: str, name: str) -> ResearcherCreated:
        """As the admin, create a researcher and switch this client to its token."""
        resp = self._call("POST", "/researchers", json={"name": name}, token=admin_token)
        created = ResearcherCreated.model_validate(resp.json())
        self.use_token(created.token)
        return created

    def register_site(self, name: str) -> SiteRegistered:
        """Register a site; the one-time enrollment token is in the answer."""
        return SiteRegistered.model_validate(
            self._call("POST", "/sites", json={"name": name}).json()
        )

    def rotate_site(self, site_id: str) -> SiteRegistered:
        """Revoke a site's token and return a new one-time enrollment token."""
        return SiteRegistered.model_validate(self._call("POST", f"/sites/{site_id}/rotate").json())

    def revoke_site(self, site_id: str) -> SitePublic:
        """Revoke a site's token (it can no longer poll or upload)."""
        return SitePublic.model_validate(self._call("POST", f"/sites/{site_id}/revoke").json())

    def sites(self) -> list[SitePublic]:
        return [SitePublic.model_validate(s) for s in self._call("GET", "/sites").json()]

    def create_experiment(self, body: ExperimentCreate) -> ExperimentPublic:
        resp = self._call("POST", "/experiments", json=body.model_dump(mode="json"))
        return ExperimentPublic.model_validate(resp.json())

    def experiment(self, experiment_id: str) -> ExperimentPublic:
        return ExperimentPublic.model_validate(
            self._call("GET", f"/experiments/{experiment_id}").json()
        )

    def start(self, experiment_id: str) -> ExperimentPublic:
        return ExperimentPublic.model_validate(
            self._call("POST", f"/experiments/{experiment_id}/start").json()
        )

    def abort(self, experiment_id: str) -> ExperimentPublic:
        return ExperimentPublic.model_validate(
            self._call("POST", f"/experiments/{experiment_id}/abort").json()
        )

    def pause(self, experiment_id: str) -> ExperimentPublic:
        return ExperimentPublic.model_validate(
            self._call("POST", f"/experiments/{experiment_id}/pause").json()
        )

    def experiments(self) -> list[ExperimentPublic]:
        """The caller's experiments, newest first."""
        return [
            ExperimentPublic.model_validate(e) for e in self._call("GET", "/experiments").json()
        ]

    def experiment_summaries(self) -> list[dict[str, Any]]:
        """The caller's experiments with rounds done and best mean Dice (the dashboard's view)."""
        return list(self._call("GET", "/dashboard/experiments").json())

    def events(self, *, experiment_id: str | None = None, after: int = 0) -> list[dict[str, Any]]:
        """Audit events the caller may see, oldest first, after event id ``after``."""
        params: dict[str, Any] = {"after": after, "limit": 1000}
        if experiment_id:
            params["experiment_id"] = experiment_id
        return list(self._call("GET", "/events", params=params).json())

    def rounds(self, experiment_id: str) -> list[RoundPublic]:
        resp = self._call("GET", f"/experiments/{experiment_id}/rounds")
        return [RoundPublic.model_validate(r) for r in resp.json()]

    def round_model(self, experiment_id: str, round_number: int) -> bytes:
        """The global model after ``round_number``, checked against its sha256 header."""
        resp = self._call("GET", f"/experiments/{experiment_id}/rounds/{round_number}/model")
        claimed = resp.headers.get(HEADER_SHA256)
        if claimed and claimed != sha256_hex(resp.content):
            raise ResearcherApiError(f"global model of round {round_number}: sha256 mismatch")
        return resp.content

    def grant(self, experiment_id: str, site_id: str) -> dict[str, Any]:
        """Let ``site_id`` (an outside site) download the experiment's routing bundle."""
        resp = self._call("POST", f"/experiments/{experiment_id}/grants", json={"site_id": site_id})
        return dict(resp.json())

    def wait_finished(
        self,
        experiment_id: str,
        *,
        timeout_s: float = 3600.0,
        poll_s: float = 0.5,
        on_poll: Any = None,
    ) -> ExperimentPublic:
        """Poll until the experiment completes, fails or is aborted.

        Args:
            experiment_id: the experiment.
            timeout_s: give up after this long. Default 3600.
            poll_s: seconds between polls. Default 0.5.
            on_poll: called with the experiment after every poll (live progress). Default None.
        """

        def look() -> ExperimentPublic:
            exp = self.experiment(experiment_id)
            if on_poll is not None:
                on_poll(exp)
            return exp

        return poll_until(
            look,
            lambda exp: exp.status in TERMINAL_STATUSES,
            interval_s=poll_s,
            timeout_s=timeout_s,
            give_up=lambda exp: ResearcherApiError(
                f"experiment {experiment_id} still {exp.status} after {timeout_s:.0f} s"
            ),
        )

    def _call(
        self, method: str, path: str, *, token: str | None = None, **kw: Any
    ) -> httpx.Response:
        bearer = token or self._token
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        resp = self.http.request(method, f"{API_PREFIX}{path}", headers=headers, **kw)
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail")
            except ValueError:
                detail = resp.text[:200]
            raise ResearcherApiError(
                f"{method} {path}: HTTP {resp.status_code}: {detail}", resp.status_code
            )
        return resp
