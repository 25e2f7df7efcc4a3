"""The container tier: a Docker engine, both images built by deploy/images.sh, cleanup after.

It runs only with FEDSEG_CONTAINER_TESTS=1 (``make test-containers``, which ``.ci/run`` calls
after the unit tests); elsewhere every test here is skipped with that reason. Where no Docker
engine can be started the tier skips with a loud banner, never silently. The engine is started
(and docker.io installed) by deploy/docker_daemon.sh; what this tier started it stops again.
"""

from __future__ import annotations

import glob
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers.docker_cli import REPO, TAG, loud, run

ENABLED = os.environ.get("FEDSEG_CONTAINER_TESTS") == "1"
BUILD_TIMEOUT_S = 2100  # a cold build on 2 cores; .ci/run bounds the tier at 2700 s


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if ENABLED:
        return
    skip = pytest.mark.skip(
        reason="container tier: `make test-containers` (.ci/run runs it after the unit tests)"
    )
    for item in items:
        if "tests/containers/" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[None]:
    """A Docker engine that answers; skips the tier loudly where none can start."""
    log_dir = Path(os.environ.get("FEDSEG_DOCKER_LOG_DIR", "/tmp/fedseg-docker"))
    before = {p.name for p in log_dir.glob("*.pid")} if log_dir.is_dir() else set()
    try:
        proc = run([str(REPO / "deploy" / "docker_daemon.sh")], timeout_s=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        proc = None
        reason = f"{type(exc).__name__}: {exc}"
    else:
        reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no reason given"
    if proc is None or proc.returncode != 0:
        message = f"CONTAINER TIER SKIPPED: no Docker engine could be started ({reason})"
        loud(message)
        pytest.skip(message)
    started = {p.name for p in log_dir.glob("*.pid")} - before if log_dir.is_dir() else set()
    yield
    if started:  # stop only the daemons this tier started
        run([str(REPO / "deploy" / "docker_daemon.sh"), "--stop"], timeout_s=120, check=False)


def _build_cas() -> list[str]:
    """Extra CAs for the build: FEDSEG_BUILD_CA, else the host's locally added CAs."""
    if os.environ.get("FEDSEG_BUILD_CA"):
        return [c for c in os.environ["FEDSEG_BUILD_CA"].split(":") if c]
    return sorted(glob.glob("/usr/local/share/ca-certificates/**/*.crt", recursive=True))


def build_argv() -> list[str]:
    """deploy/images.sh with the extra CAs of this host."""
    argv = [str(REPO / "deploy" / "images.sh")]
    for ca in _build_cas():
        argv += ["--ca", ca]
    return argv


@pytest.fixture(scope="session")
def images(docker_engine: None) -> dict[str, float]:
    """Both images built (layers cached between runs); returns the build seconds.

    FEDSEG_CONTAINER_SKIP_BUILD=1 uses the images already tagged (a quicker local rerun).
    """
    if os.environ.get("FEDSEG_CONTAINER_SKIP_BUILD") == "1":
        return {"build_s": 0.0}
    t0 = time.monotonic()
    run(build_argv(), timeout_s=BUILD_TIMEOUT_S, env={"FEDSEG_TAG": TAG})
    return {"build_s": time.monotonic() - t0}
