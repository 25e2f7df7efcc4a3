"""The launcher's process supervision: nothing it starts outlives it, on success or on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from deploy.launcher.processes import LaunchError, process_group

ROOT = Path(__file__).resolve().parents[2]


def _pids_with_mark(mark: str) -> list[int]:
    """Processes whose environment carries ``FEDSEG_TEST_MARK=mark`` (inherited by descendants)."""
    found = []
    needle = f"FEDSEG_TEST_MARK={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if needle in environ.split(b"\0") and ") Z " not in stat:  # zombies are already dead
            found.append(int(entry.name))
    return found


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_gone(mark: str, timeout_s: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = _pids_with_mark(mark)
        if not left:
            return []
        time.sleep(0.2)
    return _pids_with_mark(mark)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
@pytest.mark.slow  # a subprocess, a real server or real training
def test_stop_all_kills_children_and_grandchildren(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mark = uuid.uuid4().hex
    monkeypatch.setenv("FEDSEG_TEST_MARK", mark)
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); time.sleep(300)"
    with process_group(tmp_path / "logs") as group:
        group.start("parent", [sys.executable, "-c", script])
        deadline = time.monotonic() + 10
        while len(_pids_with_mark(mark)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_pids_with_mark(mark)) == 2
    assert _wait_gone(mark) == []


def test_check_alive_reports_the_log_tail(tmp_path: Path) -> None:
    with process_group(tmp_path / "logs") as group:
        proc = group.start(
            "crasher", [sys.executable, "-c", "print('boom: bad config'); raise SystemExit(3)"]
        )
        proc.popen.wait(timeout=10)
        with pytest.raises(LaunchError, match=r"(?s)exited with code 3.*boom: bad config"):
            group.check_alive()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_interrupted_demo_leaves_no_process_behind(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) the demo once its aggregator and agents run: every process is gone."""
    mark = uuid.uuid4().hex
    env = {**os.environ, "FEDSEG_TEST_MARK": mark}
    work = tmp_path / "work"
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deploy.cli",
            "demo",
            "--work-dir",
            str(work),
            "--report-dir",
            str(tmp_path / "report"),
            "--sites",
            "2",
            "--rounds",
            "50",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # As in a terminal: a suite started in the background by a shell without job control
        # inherits SIGINT ignored, and so would the demo (Python keeps an ignored SIGINT).
        preexec_fn=_default_sigint,
    )
    try:
        deadline = time.monotonic() + 120
        # Demo + aggregator + two agents all alive means the federation is running.
        while time.monotonic() < deadline and len(_pids_with_mark(mark)) < 4:
            assert demo.poll() is None, demo.stdout.read().decode() if demo.stdout else ""
            time.sleep(0.3)
        assert len(_pids_with_mark(mark)) >= 4
        time.sleep(2)
        demo.send_signal(signal.SIGINT)
        out, _ = demo.communicate(timeout=60)
        assert demo.returncode == 130, out.decode()
        assert "interrupted" in out.decode()
    finally:
        if demo.poll() is None:
            demo.kill()
    assert _wait_gone(mark) == []


def test_stop_all_goes_on_when_a_killed_process_is_reaped_late(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A starved box may reap a SIGKILLed child after the wait: the others are still stopped."""
    ignore_term = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready'); "
        "time.sleep(300)"
    )
    with process_group(tmp_path / "logs") as group:
        first = group.start("first", [sys.executable, "-c", "import time; time.sleep(300)"])
        slow = group.start("slow", [sys.executable, "-c", ignore_term])
        deadline = time.monotonic() + 120
        while "ready" not in slow.log_tail() and time.monotonic() < deadline:
            time.sleep(0.1)  # SIGTERM must find the handler installed
        real_wait = slow.popen.wait

        def late_wait(timeout: float | None = None) -> int:  # every wait runs out
            raise subprocess.TimeoutExpired(slow.popen.args, timeout or 0)

        monkeypatch.setattr(slow.popen, "wait", late_wait)
        group.stop_all()  # newest first: "slow", then "first"
        monkeypatch.setattr(slow.popen, "wait", real_wait)
        assert slow.popen.wait(timeout=30) == -signal.SIGKILL
        assert first.popen.wait(timeout=30) == -signal.SIGTERM


def test_wait_healthy_polls_with_one_client_until_the_service_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client per poll loaded the TLS trust store every 50 ms (27 ms of CPU each)."""
    import httpx

    from deploy.launcher import processes

    made: list[object] = []

    class CountingClient(httpx.Client):
        def __init__(self, *args: object, **kwargs: object) -> None:
            made.append(self)
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(processes.httpx, "Client", CountingClient)
    port = processes.free_port()
    server = (
        "import http.server, time\n"
        "time.sleep(0.5)\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.send_header('Content-Length', '0'); self.end_headers()\n"
        f"http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n"
    )
    with process_group(tmp_path / "logs") as group:
        proc = group.start("late", [sys.executable, "-c", server])
        started = time.monotonic()
        processes.wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, timeout_s=60, poll_s=0.02)
        assert time.monotonic() - started >= 0.4  # it really waited through refused polls
    assert len(made) == 1
