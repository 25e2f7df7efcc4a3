"""The site agent's one settings class: environment (``FEDSEG_SITE_*``), an optional file, checks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from data_specs.constants import DeviceName
from data_specs.errors import describe_validation_error
from site_agent.errors import SiteSettingsError


class SiteSettings(BaseSettings):
    """Everything a hospital's site agent is configured with.

    Values come from keyword arguments (the CLI), then ``FEDSEG_SITE_<FIELD>`` environment
    variables, then an optional ``KEY=VALUE`` file (the same format as ``docker --env-file``),
    then the defaults below. Build it with ``SiteSettings.load`` to get a ``SiteSettingsError``
    with a readable message (never echoing a token) instead of a pydantic error.

    Args:
        aggregator_url: base URL of the aggregator, ``https://`` unless ``allow_insecure_http``.
            Default None (only ``infer`` and ``evaluate`` work without one).
            Example: ``"https://fedseg.example.org:8443"``.
        enrollment_token: one-time token from the researcher; used on first start only.
            Default None. Example: ``"q3N...Xw"``.
        site_token: site token, if IT provisions it directly; otherwise the agent keeps the one
            it receives at enrollment in ``<work_dir>/site_token``. Default None.
        ca_bundle: PEM file of the CA that signed the aggregator's certificate (private PKI),
            trusted in addition to the system trust store (where a TLS-inspecting proxy's CA
            belongs). Default None (system trust store only). Example: ``"/etc/fedseg/ca.pem"``.
        client_cert: PEM certificate (chain) of this site for mutual TLS, issued by
            ``fedseg deploy site-cert`` or the hospital's PKI with the site's name as CN; needed
            when the aggregator requires client certificates. Default None. Example:
            ``"/etc/fedseg/site-hospital-a.pem"``.
        client_key: the private key of ``client_cert`` (PEM, unencrypted; keep it 0600).
            Default None.
        allow_insecure_http: accept a plain ``http://`` aggregator URL. Development only.
            Default False.
        manifest: the local dataset manifest (``dataset.json``). Default None (required to
            train). Example: ``"/data/heart/dataset.json"``.
        work_dir: where the agent keeps its token, state, models and logs. Default
            ``"site_work"``. Example: ``"/var/lib/fedseg"``.
        device: ``cpu``, ``cuda`` or ``auto`` (cuda when available). Default ``auto``.
        accept_experiments: the hospital's standing consent: ``"*"`` (every experiment),
            experiment ids, or ``"researcher:<name>"``. Default empty: approve each experiment
            with ``fedseg site approve EXPERIMENT`` after ``fedseg site invitations``.
            Example (environment): ``FEDSEG_SITE_ACCEPT_EXPERIMENTS='["researcher:alice"]'``.
        max_samples: the most training cases this site will train on, declared once at
            enrolment: the aggregator caps the sample count (FedAvg weight) of every update of
            this site at it, for good. Default None: the manifest's training cases for a 3D
            task (leave room by setting it when cases will be added later); a 2D task declares
            nothing (its samples may be slices of volumes) and is capped by its dataset
            fingerprint instead. Example: ``120``.
        share_personal: send the personal model to the aggregator after each round so that
            outside hospitals can route to it. Default False (opt-in).
        poll_wait_s: long-poll duration of ``GET /tasks/next``. Default 30. Example: ``5``.
        request_timeout_s: timeout of one HTTP request besides the long poll. Default 120.
        backoff_initial_s: first retry delay after a network error or 5xx. Default 1.0.
        backoff_max_s: largest retry delay. Default 60.0.
        max_retries: retries of one request before giving up with a clear error. Default 8.
        num_workers: DataLoader worker processes. Default 0 (deterministic, no fork).
        data_cache_memory_mb: memory for pre-processed cases kept across rounds; 0 keeps none
            in memory. Default 2048.
        data_cache_disk: also keep them in ``<work dir>/cache/data`` (read at the next start
            instead of the scans). Default True.
    """

    model_config = SettingsConfigDict(
        env_prefix="FEDSEG_SITE_", extra="forbid", env_file=None, validate_default=True
    )

    aggregator_url: str | None = None
    enrollment_token: SecretStr | None = None
    site_token: SecretStr | None = None
    ca_bundle: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    allow_insecure_http: bool = False
    manifest: Path | None = None
    work_dir: Path = Path("site_work")
    device: DeviceName = DeviceName.AUTO
    max_samples: Annotated[int, Field(ge=1, le=1_000_000_000)] | None = None
    share_personal: bool = False
    accept_experiments: list[Annotated[str, Field(min_length=1, max_length=250)]] = Field(
        default_factory=list, max_length=100
    )
    poll_wait_s: Annotated[int, Field(ge=1, le=300)] = 30
    request_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 120.0
    backoff_initial_s: Annotated[float, Field(gt=0, le=600)] = 1.0
    backoff_max_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    max_retries: Annotated[int, Field(ge=0, le=1000)] = 8
    num_workers: Annotated[int, Field(ge=0, le=64)] = 0
    data_cache_memory_mb: Annotated[int, Field(ge=0, le=1 << 20)] = 2048
    data_cache_disk: bool = True

    @field_validator("aggregator_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"expected an http(s) URL with a host name, got scheme {parts.scheme!r}"
            )
        if parts.username or parts.password:
            raise ValueError("the URL must not carry credentials; use the token settings")
        if parts.query or parts.fragment:
            raise ValueError("the URL must not carry a query or fragment")
        return value.strip().rstrip("/")

    @field_validator("ca_bundle", "client_cert", "client_key", "manifest", "work_dir")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()

    @model_validator(mode="after")
    def _check_safety(self) -> SiteSettings:
        plain = bool(self.aggregator_url and self.aggregator_url.startswith("http://"))
        if plain and not self.allow_insecure_http:
            raise ValueError(
                "refusing a plain http:// aggregator URL: use https://, or set "
                "FEDSEG_SITE_ALLOW_INSECURE_HTTP=true for development only"
            )
        if self.ca_bundle is not None and not self.ca_bundle.is_file():
            raise ValueError(f"ca_bundle {self.ca_bundle} is not a readable file")
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("mutual TLS needs both client_cert and client_key, or neither")
        for name in ("client_cert", "client_key"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path} is not a readable file")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s}) must be at least backoff_initial_s "
                f"({self.backoff_initial_s})"
            )
        return self

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> SiteSettings:
        """Build and validate settings from overrides, the environment and an optional file.

        Args:
            config_file: a ``KEY=VALUE`` file (keys with the ``FEDSEG_SITE_`` prefix). Default
                None. Example: ``"/etc/fedseg/site.env"``.
            **overrides: field values that win over the environment; ``None`` values are
                ignored so CLI options left unset fall through. Example: ``work_dir="/tmp/w"``.

        Returns:
            Validated settings.

        Raises:
            SiteSettingsError: the file is missing, or a value is invalid or unsafe.
        """
        if config_file is not None and not Path(config_file).is_file():
            raise SiteSettingsError(f"settings file {config_file} does not exist")
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(_env_file=config_file, **given)  # type: ignore[call-arg]
        except ValidationError as exc:
            raise SiteSettingsError(
                describe_validation_error(exc, "invalid site settings")
            ) from None

    def resolve_device(self) -> str:
        """The torch device to use: ``auto`` becomes ``cuda`` when one is available.

        Raises:
            SiteSettingsError: ``cuda`` was asked for and none is available.
        """
        import torch

        if self.device is DeviceName.AUTO:
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device is DeviceName.CUDA and not torch.cuda.is_available():
            raise SiteSettingsError("device=cuda was asked for but torch sees no CUDA device")
        return self.device.value

    def require_aggregator(self) -> str:
        """The aggregator URL, or a clear error when it is not configured."""
        if not self.aggregator_url:
            raise SiteSettingsError(
                "no aggregator URL: set FEDSEG_SITE_AGGREGATOR_URL or pass --aggregator-url"
            )
        return self.aggregator_url

    def require_manifest(self) -> Path:
        """The manifest path, or a clear error when it is not configured or missing."""
        if self.manifest is None:
            raise SiteSettingsError(
                "no dataset manifest: set FEDSEG_SITE_MANIFEST or pass --manifest"
            )
        if not self.manifest.is_file():
            raise SiteSettingsError(f"dataset manifest {self.manifest} does not exist")
        return self.manifest
