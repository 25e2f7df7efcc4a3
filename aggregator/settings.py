"""The aggregator's one settings class: environment (``FEDSEG_AGG_*``), an optional env file, CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from data_specs.constants import LogLevel

MIN_ADMIN_TOKEN_LENGTH = 16


class AggregatorSettings(BaseSettings):
    """Settings of ``fedseg aggregator serve``, validated once at start-up and injected.

    Args:
        data_dir: holds ``aggregator.db`` and ``blobs/``. Default ``./aggregator_data``.
        database_url: SQLAlchemy URL; default SQLite in ``data_dir``. Example:
            ``"sqlite:////srv/fedseg/aggregator.db"``.
        admin_token: the admin's bearer token (``FEDSEG_AGG_ADMIN_TOKEN``); at least 16 characters.
        admin_token_file: file holding the admin token (wins over ``admin_token``).
        dev: allow starting without an admin token (admin routes then answer 401). Default False.
        host: bind address. Default ``127.0.0.1``.
        port: TCP port. Default 8080.
        max_upload_bytes: largest accepted bundle upload. Default 1 GiB.
        max_long_poll_s: cap on ``GET /tasks/next?wait=``. Default 60.
        orchestrator_interval_s: how often rounds and deadlines are checked. Default 1.
        orchestrator_enabled: run the background round loop (tests drive it by hand). Default True.
        sqlite_synchronous: ``FULL`` (survives power loss) or ``NORMAL`` (survives kill -9 only).
        log_level: root log level. Default ``INFO``.
        log_format: ``json`` lines or ``kv`` (key=value). Default ``json``.
        ssl_certfile: TLS certificate for uvicorn. Default None (plain HTTP).
        ssl_keyfile: TLS key for uvicorn. Default None.
        site_ca_certs: CA bundle (PEM) that signs site client certificates (``fedseg deploy
            site-cert``). When set (TLS only), every site request and enrolment must present a
            certificate from it whose subject CN is the site's name (mutual TLS); researchers
            and browsers still connect without one. Default None (off).
        header_timeout_s: a connection whose request headers are not complete this long after
            it opened (or after a keep-alive request began) is closed (slowloris). Default 10.
        keep_alive_s: idle keep-alive connections are closed after this long. Default 5.
        max_header_bytes: largest safetensors header accepted in an upload, checked before it
            is parsed. Default 1 MiB.
        max_json_bytes: largest JSON request body. Default 1 MiB.
        body_timeout_s: longest wait for one chunk of a request body. Default 30.
        max_concurrent_uploads: uploads streaming at once; more wait for a slot. Default 8.
        malloc_arenas: glibc malloc arenas ``serve`` allows the process (less memory held in
            fragments by its threads); 0 keeps glibc's default, as does ``MALLOC_ARENA_MAX``
            in the environment. Default 2.
        upload_slot_wait_s: how long an upload waits for a slot before it is answered 429.
            Default 10 (0: refuse at once).
        max_waiting_uploads: uploads that may wait for a slot at once; more answer 429 at
            once. Default 1024.
        auth_failures_per_minute: failed authentications allowed per address and per token
            (after a burst of ``auth_failure_burst``); more answer 429. Default 30.
        auth_failure_burst: failed authentications allowed at once. Default 10.
        uploads_per_minute: uploads per site token (burst ``upload_burst``). Default 60.
        upload_burst: uploads allowed at once per site. Default 20.
        max_model_parameters: largest U-Net (trainable parameters, computed from the spec by
            arithmetic) an experiment may ask for. Default 100 million.
        require_consent: sites take part only in experiments they approved (invitations or
            their agent's ``accept_experiments``). Default True.
        token_ttl_days: researcher and site tokens expire this many days after they were issued
            or rotated. Default None (no expiry).

    Raises:
        pydantic.ValidationError: no admin token outside dev, a short token, an unreadable token
            file, or only one of the two TLS files.
    """

    model_config = SettingsConfigDict(env_prefix="FEDSEG_AGG_", extra="ignore")

    data_dir: Path = Path("aggregator_data")
    database_url: str | None = None
    admin_token: SecretStr | None = None
    admin_token_file: Path | None = None
    dev: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    max_upload_bytes: Annotated[int, Field(ge=1024)] = 1 << 30
    max_long_poll_s: Annotated[float, Field(ge=0.0, le=3600.0)] = 60.0
    orchestrator_interval_s: Annotated[float, Field(gt=0.0, le=60.0)] = 1.0
    orchestrator_enabled: bool = True
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "FULL"
    log_level: LogLevel = LogLevel.INFO
    log_format: Literal["json", "kv"] = "json"
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    site_ca_certs: Path | None = None
    header_timeout_s: Annotated[float, Field(gt=0.0, le=600.0)] = 10.0
    keep_alive_s: Annotated[int, Field(ge=1, le=600)] = 5
    max_header_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = 1 << 20
    max_json_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = 1 << 20
    body_timeout_s: Annotated[float, Field(gt=0.0, le=3600.0)] = 30.0
    max_concurrent_uploads: Annotated[int, Field(ge=1, le=10_000)] = 8
    malloc_arenas: Annotated[int, Field(ge=0, le=1024)] = 2
    upload_slot_wait_s: Annotated[float, Field(ge=0.0, le=600.0)] = 10.0
    max_waiting_uploads: Annotated[int, Field(ge=0, le=1_000_000)] = 1024
    auth_failures_per_minute: Annotated[float, Field(gt=0.0)] = 30.0
    auth_failure_burst: Annotated[int, Field(ge=1)] = 10
    uploads_per_minute: Annotated[float, Field(gt=0.0)] = 60.0
    upload_burst: Annotated[int, Field(ge=1)] = 20
    max_model_parameters: Annotated[int, Field(ge=1)] = 100_000_000
    token_ttl_days: Annotated[float, Field(gt=0.0)] | None = None
    require_consent: bool = True

    @model_validator(mode="after")
    def _check_security(self) -> AggregatorSettings:
        if self.admin_token_file is not None:
            try:
                text = self.admin_token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(
                    f"admin token file {self.admin_token_file} cannot be read: {exc.strerror}"
                ) from exc
            if not text:
                raise ValueError(f"admin token file {self.admin_token_file} is empty")
            self.admin_token = SecretStr(text)
        token = self.admin_token.get_secret_value() if self.admin_token else ""
        if not self.dev:
            if not token:
                raise ValueError(
                    "refusing to start without an admin token: set FEDSEG_AGG_ADMIN_TOKEN or "
                    "--admin-token-file (or pass --dev on a development machine)"
                )
            if len(token) < MIN_ADMIN_TOKEN_LENGTH:
                raise ValueError(
                    f"admin token must have at least {MIN_ADMIN_TOKEN_LENGTH} characters, "
                    f"got {len(token)}"
                )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("TLS needs both ssl_certfile and ssl_keyfile, or neither")
        if self.site_ca_certs is not None:
            if self.ssl_certfile is None:
                raise ValueError("site_ca_certs (mutual TLS) needs ssl_certfile and ssl_keyfile")
            if not self.site_ca_certs.is_file():
                raise ValueError(f"site_ca_certs {self.site_ca_certs} is not a readable file")
        return self

    @property
    def resolved_database_url(self) -> str:
        """``database_url``, or SQLite at ``data_dir/aggregator.db``."""
        return self.database_url or default_database_url(self.data_dir)

    @property
    def blob_dir(self) -> Path:
        """Root of the content-addressed blob store."""
        return self.data_dir / "blobs"


def default_database_url(data_dir: Path) -> str:
    """SQLite URL of the database file inside a data dir."""
    return f"sqlite:///{(Path(data_dir) / 'aggregator.db').resolve()}"
