"""Supervise the local federation's processes: start them, wait for them, and always stop them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx


class LaunchError(RuntimeError):
    """A process of the local federation failed to start or died."""


@dataclass
class ManagedProcess:
    """A child process started in its own process group, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send_line(self, text: str) -> None:
        """Write one line to its standard input (started with ``stdin_pipe``) and close it.

        Raises:
            LaunchError: it has no stdin pipe, or it exited before reading.
        """
        if self.popen.stdin is None:
            raise LaunchError(f"{self.name} was started without a stdin pipe")
        try:
            self.popen.stdin.write(text.encode() + b"\n")
            self.popen.stdin.close()
        except BrokenPipeError:
            raise LaunchError(f"{self.name} exited before reading its input") from None

    def log_tail(self, lines: int = 20) -> str:
        """Last lines of the process's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class ProcessGroup:
    """Every process the launcher started; ``stop_all`` terminates them, then kills stragglers.

    Each child runs in a new session (its own process group), so a whole tree (uvicorn
    workers, data-loader workers) is signalled at once and nothing outlives the launcher.
    """

    log_dir: Path
    processes: list[ManagedProcess] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin_pipe: bool = False,
    ) -> ManagedProcess:
        """Start ``argv`` as ``name``; stdout and stderr go to ``log_dir/<name>.log``.

        Args:
            name: short process name. Example: ``"site_0"``.
            argv: command line. Example: ``[sys.executable, "-m", "site_agent", "run"]``.
            env: extra environment variables on top of ``os.environ``. Default none.
            stdin_pipe: give it a pipe as standard input (``ManagedProcess.send_line``), e.g.
                an enrollment token it reads when the site is registered. Default False
                (``/dev/null``).
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                env=full_env,
                start_new_session=True,
            )
        proc = ManagedProcess(name=name, popen=popen, log_path=log_path)
        self.processes.append(proc)
        return proc

    def check_alive(self, names: Sequence[str] | None = None) -> None:
        """Raise ``LaunchError`` with the log tail of the first dead process among ``names``."""
        for proc in self.processes:
            if (names is None or proc.name in names) and not proc.alive():
                raise LaunchError(
                    f"{proc.name} exited with code {proc.popen.returncode}; "
                    f"last log lines:\n{proc.log_tail()}"
                )

    def stop(self, proc: ManagedProcess, *, grace_s: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL after ``grace_s`` seconds."""
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                # SIGKILL cannot be refused, only reaped late on a starved machine: never let
                # that abort ``stop_all`` and leave the processes after this one running.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=5)
        # Children of the group that outlived their leader.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        """Stop every process, newest first (agents before the aggregator)."""
        for proc in reversed(self.processes):
            self.stop(proc)


@contextlib.contextmanager
def process_group(log_dir: Path) -> Iterator[ProcessGroup]:
    """A ``ProcessGroup`` whose processes are stopped on success, failure, Ctrl-C and SIGTERM."""
    group = ProcessGroup(log_dir=log_dir)
    previous = signal.getsignal(signal.SIGTERM)

    def _on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    with contextlib.suppress(ValueError):  # not in the main thread: leave SIGTERM alone
        signal.signal(signal.SIGTERM, _on_term)
    try:
        yield group
    finally:
        group.stop_all()
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGTERM, previous)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_healthy(
    url: str,
    proc: ManagedProcess,
    *,
    timeout_s: float = 60.0,
    verify: bool | str = True,
    poll_s: float = 0.05,
) -> None:
    """Poll ``url`` until it answers 200, or raise with the process's log tail.

    ``poll_s`` (default 0.05 s) bounds how late a launcher notices the service is up: every
    launch waits on it, and a refused connection costs next to nothing. One client serves every
    poll: a new one per poll loaded the TLS trust store each time (27 ms of CPU, taken from the
    service that is starting).
    """
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0, verify=verify) as client:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise LaunchError(
                    f"{proc.name} exited with code {proc.popen.returncode} while starting; "
                    f"last log lines:\n{proc.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return
            time.sleep(poll_s)
    raise LaunchError(f"{proc.name} did not become healthy at {url} within {timeout_s:.0f} s")


def fedseg_argv(*args: str) -> list[str]:
    """Command line running the ``fedseg`` CLI with this interpreter (no PATH lookup)."""
    return [sys.executable, "-m", "deploy.cli", *args]
