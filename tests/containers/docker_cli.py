"""Small wrappers over the docker and compose CLIs for the container tier (timeouts everywhere)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "deploy" / "compose.yaml"
TAG = os.environ.get("FEDSEG_CONTAINER_TAG", "ci")
AGGREGATOR_IMAGE = f"fedseg/aggregator:{TAG}"
SITE_IMAGE = f"fedseg/site-agent:{TAG}"


def loud(message: str) -> None:
    """Print past pytest's capture, framed, so a skipped tier cannot go unnoticed."""
    bar = "!" * 78
    sys.__stderr__.write(f"\n{bar}\n{message}\n{bar}\n")  # type: ignore[union-attr]


def run(
    argv: Sequence[str], *, timeout_s: float = 120, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command with a timeout; on ``check``, fail with its output's tail."""
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv[:4])} ... exited {proc.returncode}:\n{proc.stdout[-2500:]}\n{proc.stderr[-2500:]}"
        )
    return proc


def inspect(kind: str, name: str) -> dict[str, Any]:
    """``docker <kind> inspect NAME`` as a dict."""
    return json.loads(run(["docker", kind, "inspect", name]).stdout)[0]


def compose_cli(version: str) -> list[str]:
    """The Compose CLI: ``v1`` is ``docker-compose`` (1.29 in Debian 12), ``v2`` ``docker compose``."""
    return ["docker-compose"] if version == "v1" else ["docker", "compose"]


@dataclass
class ComposeProject:
    """One compose project of deploy/compose.yaml with its own name, ports, secrets and CLI."""

    name: str
    env: dict[str, str]
    cli: list[str] = field(default_factory=lambda: compose_cli("v1"))
    _ids: dict[str, str] = field(default_factory=dict)

    def __call__(self, *args: str, timeout_s: float = 300, check: bool = True) -> str:
        argv = [*self.cli, "-f", str(COMPOSE_FILE), "-p", self.name, *args]
        return run(argv, timeout_s=timeout_s, check=check, env=self.env).stdout

    def container(self, service: str) -> str:
        """The container id of a service (also one that has exited), looked up once.

        By label with the docker CLI: every compose v1 call costs seconds on a loaded host.
        """
        if service not in self._ids:
            labels = [f"com.docker.compose.project={self.name}"]
            labels.append(f"com.docker.compose.service={service}")
            argv = ["docker", "ps", "-aq", *(f"--filter=label={lab}" for lab in labels)]
            ids = run(argv).stdout.split()
            assert ids, f"service {service} has no container"
            self._ids[service] = ids[0]
        return self._ids[service]

    def read_file(self, service: str, path: str) -> str:
        """A file from a service's container, running or exited (``docker cp``)."""
        proc = subprocess.run(
            ["docker", "cp", f"{self.container(service)}:{path}", "-"],
            capture_output=True,
            timeout=60,
            check=True,
        )
        with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
            member = tar.next()
            assert member is not None and member.isfile(), f"{service}:{path} is not a file"
            handle = tar.extractfile(member)
            assert handle is not None
            return handle.read().decode()

    def logs(self, service: str) -> str:
        """The container's stdout and stderr (the agent logs to stderr)."""
        proc = run(["docker", "logs", self.container(service)], check=False)
        return proc.stdout + proc.stderr

    def wait_healthy(self, service: str, timeout_s: float) -> float:
        """Seconds until the service's health check reported healthy."""
        t0 = time.monotonic()
        while True:
            state = inspect("container", self.container(service))["State"]
            health = state.get("Health", {}).get("Status")
            if health == "healthy":
                return time.monotonic() - t0
            assert state["Status"] == "running", f"{service} is {state['Status']}"
            assert time.monotonic() - t0 < timeout_s, (
                f"{service} still {health} after {timeout_s} s"
            )
            time.sleep(2)
