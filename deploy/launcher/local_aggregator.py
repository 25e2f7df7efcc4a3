"""A local aggregator for the demo, the simulation and the benchmarks: started in one place.

``start_aggregator`` runs ``fedseg aggregator serve`` on a free loopback port with a fresh admin
token and waits until it answers ``/healthz``; ``local_settings`` is the in-process equivalent
(``create_app(settings)`` behind FastAPI's test transport or a thread-served uvicorn). Either
way the caller gets the admin token that ``ResearcherClient.create_researcher`` needs::

    with process_group(work / "logs") as group:
        agg = start_aggregator(group, work / "aggregator")
        with httpx.Client(base_url=agg.url) as http:
            ResearcherClient(http).create_researcher(agg.admin_token, "demo-researcher")
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy.launcher.processes import (
    ManagedProcess,
    ProcessGroup,
    fedseg_argv,
    free_port,
    wait_healthy,
)

if TYPE_CHECKING:
    from aggregator.settings import AggregatorSettings


@dataclass(frozen=True)
class LocalAggregator:
    """A started aggregator process: where it listens and its admin token."""

    url: str
    admin_token: str
    process: ManagedProcess


def new_admin_token() -> str:
    """A fresh random admin token (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(32)


def start_aggregator(
    group: ProcessGroup,
    data_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    log_level: str | None = None,
    healthy_timeout_s: float = 60.0,
    port: int | None = None,
) -> LocalAggregator:
    """Start ``fedseg aggregator serve`` on 127.0.0.1 (a free port) and wait until it is healthy.

    Args:
        group: the process group that owns (and stops) it; the process is named ``aggregator``.
        data_dir: its database and blob store.
        env: extra ``FEDSEG_AGG_*`` environment. Default none.
        log_level: ``FEDSEG_AGG_LOG_LEVEL``. Default None (the service's default).
        healthy_timeout_s: how long to wait for ``/healthz``. Default 60 (a loaded machine
            needs more).
        port: the loopback port, e.g. one chosen earlier with ``free_port`` so that agents
            started before it know the URL. Default None (a free one).

    Raises:
        LaunchError: it exited or did not become healthy in time.
    """
    admin = new_admin_token()
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = {"FEDSEG_AGG_ADMIN_TOKEN": admin}
    if log_level is not None:
        full_env["FEDSEG_AGG_LOG_LEVEL"] = log_level
    argv = fedseg_argv(
        "aggregator", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--data-dir", str(data_dir),
    )  # fmt: skip
    process = group.start("aggregator", argv, env={**full_env, **(env or {})})
    wait_healthy(f"{url}/healthz", process, timeout_s=healthy_timeout_s)
    return LocalAggregator(url, admin, process)


def local_settings(data_dir: Path, **overrides: Any) -> tuple[AggregatorSettings, str]:
    """Settings of an in-process aggregator with a fresh admin token, and that token.

    Args:
        data_dir: its database and blob store.
        **overrides: other ``AggregatorSettings`` fields. Example: ``orchestrator_interval_s=0.1``.
    """
    from pydantic import SecretStr

    from aggregator.settings import AggregatorSettings

    admin = new_admin_token()
    settings = AggregatorSettings(data_dir=data_dir, admin_token=SecretStr(admin), **overrides)
    return settings, admin
