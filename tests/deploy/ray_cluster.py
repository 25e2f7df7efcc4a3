"""A two-node Ray cluster on this machine: ``ray start --head`` plus ``ray start --address``.

Each node is a ``ray start --block`` process with its own temp dir and ports; stopping sends
SIGTERM to those two processes (``--block`` makes each kill the Ray processes it started), so
no other Ray on the machine is touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.aggregator.e2e_helpers import free_port

OBJECT_STORE_BYTES = 100 * 2**20
# A loopback-only test cluster without Ray's token authentication: with it, a node started by
# ``ray start --address`` must find the head's token (``~/.ray/auth_token``), shared state that
# other Ray users of the machine change.
ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


class ClusterDidNotStart(RuntimeError):
    """Ray's nodes did not come up (the caller skips, saying why)."""


def _ray_cli() -> list[str]:
    exe = Path(sys.executable).with_name("ray")
    if not exe.exists():
        raise ClusterDidNotStart(f"no `ray` command next to {sys.executable}")
    return [str(exe)]


def _node(args: list[str], temp_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    cmd = [*_ray_cli(), "start", "--block", "--disable-usage-stats", "--num-cpus", "1"]
    cmd += ["--temp-dir", str(temp_dir), "--object-store-memory", str(OBJECT_STORE_BYTES)]
    cmd += ["--dashboard-agent-listen-port", str(free_port())]
    cmd += ["--node-ip-address", "127.0.0.1", *args]
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **ENV}
        )


def _alive_nodes(address: str) -> int:
    """Alive nodes seen from a short-lived driver connection (a fresh interpreter)."""
    probe = (
        f"import ray; ray.init(address={address!r}, log_to_driver=False); "
        "print(sum(1 for n in ray.nodes() if n['Alive'])); ray.shutdown()"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, **ENV},
        )
    except subprocess.TimeoutExpired:
        return 0
    lines = done.stdout.strip().splitlines()
    return int(lines[-1]) if done.returncode == 0 and lines and lines[-1].isdigit() else 0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@contextlib.contextmanager
def two_node_cluster(work: Path, attempts: int = 3, timeout_s: float = 600) -> Iterator[str]:
    """Start a head and a worker node (1 CPU each); yields the GCS address ``127.0.0.1:port``.

    A node that fails to start is tried again (``attempts`` in all): on a starved machine Ray's
    fixed 30 s wait for its raylet to register runs out.

    Raises:
        ClusterDidNotStart: no attempt brought both nodes up (the last failure's log lines).
    """
    problem = ""
    for attempt in range(attempts):
        procs: list[subprocess.Popen[bytes]] = []
        port = free_port()
        # Short paths: Ray's Unix socket paths must fit in 107 bytes.
        temps = [Path(f"/tmp/rh{port}"), Path(f"/tmp/rw{port}")]
        logs = [work / f"ray_head_{attempt}.log", work / f"ray_worker_{attempt}.log"]
        try:
            address = _start(port, temps, logs, procs, timeout_s)
            if address is None:
                problem = " | ".join(_tail(log) for log in logs)
                continue
            yield address
            return
        finally:
            for proc in reversed(procs):
                _stop(proc)
            for tmp in temps:
                shutil.rmtree(tmp, ignore_errors=True)
    raise ClusterDidNotStart(f"{attempts} attempts; last: {problem}")


def _start(
    port: int,
    temps: list[Path],
    logs: list[Path],
    procs: list[subprocess.Popen[bytes]],
    timeout_s: float,
) -> str | None:
    """Start both nodes (appending them to ``procs``); their address, or None if one failed."""
    address = f"127.0.0.1:{port}"
    head_args = ["--head", "--port", str(port), "--include-dashboard", "false"]
    head_args += ["--ray-client-server-port", str(free_port())]
    procs.append(_node(head_args, temps[0], logs[0]))
    deadline = time.monotonic() + timeout_s
    while not (temps[0] / "ray_current_cluster").exists():
        if procs[0].poll() is not None or time.monotonic() > deadline:
            return None
        time.sleep(0.5)
    procs.append(_node(["--address", address], temps[1], logs[1]))
    while _alive_nodes(address) < 2:
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            return None
        time.sleep(1)
    return address


def _tail(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return f"{log.name}: no log"
    return f"{log.name}: " + " / ".join(lines[-3:])
