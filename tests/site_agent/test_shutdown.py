"""``stop_on_signals``: SIGTERM becomes ``StopRequested``, with a hard deadline behind it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from site_agent.federation import shutdown
from site_agent.federation.shutdown import EXIT_FORCED, StopRequested, stop_on_signals
from site_agent.federation.workdir import WorkDir

ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_raises_stop_requested_and_sets_the_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The watchdog is recorded, not started: a real one would end this test process (pytest
    # itself) with os._exit 30 s later, wherever the suite has got to by then.
    watchdogs: list[float] = []
    monkeypatch.setattr(shutdown, "_start_watchdog", watchdogs.append)
    event = threading.Event()
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(StopRequested) as caught, stop_on_signals(event, grace_s=30):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # interrupted at once
    assert watchdogs == [30]
    assert caught.value.signum == signal.SIGTERM and event.is_set()
    assert "SIGTERM" in str(caught.value)
    assert signal.getsignal(signal.SIGTERM) is previous
    assert not isinstance(caught.value, Exception)  # `except Exception` never swallows it


def test_outside_the_main_thread_it_installs_nothing() -> None:
    seen: list[object] = []

    def body() -> None:
        with stop_on_signals(grace_s=30):
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [before]


@pytest.mark.slow  # a subprocess, a real server or real training
def test_a_process_that_does_not_unwind_is_ended_at_the_deadline() -> None:
    # The code swallows the stop (as a long native call would delay it): the watchdog ends it.
    code = textwrap.dedent(
        """
        import os, signal, sys, time
        from site_agent.federation.shutdown import StopRequested, stop_on_signals
        with stop_on_signals(grace_s=1.0):
            try:  # "ready" inside the try: the signal may arrive right after it
                print("ready", flush=True)
                time.sleep(60)
            except StopRequested:
                time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == EXIT_FORCED
    assert 0.8 < time.monotonic() - t0 < 10


@pytest.mark.slow  # a subprocess, a real server or real training
def test_the_deadline_starts_when_the_signal_arrives_not_when_the_handler_runs() -> None:
    # The main thread blocks SIGTERM and sits in native code (libc sleep, GIL released) for a
    # minute: the Python handler cannot run before that. The C-level handler still writes the
    # wakeup pipe, so the watchdog ends the process about grace_s after the signal. "ready" comes
    # from another thread once the main thread is inside the sleep system call: a signal during
    # the main thread's last bytecodes would run the handler at once.
    code = textwrap.dedent(
        """
        import ctypes, signal, threading, time
        from site_agent.federation.shutdown import stop_on_signals
        libc = ctypes.CDLL(None)
        main = threading.get_native_id()
        SLEEPS = {"35", "230", "101", "115"}  # nanosleep, clock_nanosleep (x86-64, arm64)

        def announce():
            while True:
                with open(f"/proc/self/task/{main}/syscall") as fh:
                    if fh.read().split()[0] in SLEEPS:
                        break
                time.sleep(0.01)
            print("ready", flush=True)

        with stop_on_signals(grace_s=1.0):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            threading.Thread(target=announce, daemon=True).start()
            libc.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == EXIT_FORCED
        assert 0.8 < time.monotonic() - t0 < 10
    finally:
        proc.kill()
        proc.wait()


def test_a_previous_wakeup_fd_still_gets_the_signal_and_is_restored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    watchdogs: list[float] = []
    monkeypatch.setattr(shutdown, "_start_watchdog", watchdogs.append)
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    os.set_blocking(read_fd, False)
    before = signal.set_wakeup_fd(write_fd)
    try:
        with pytest.raises(StopRequested), stop_on_signals(grace_s=30):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        time.sleep(0.2)
        assert os.read(read_fd, 16) == bytes([signal.SIGTERM])  # forwarded by the reader
        assert signal.set_wakeup_fd(write_fd) == write_fd  # restored on exit
        assert watchdogs == [30]  # started once, by the reader or the handler
    finally:
        signal.set_wakeup_fd(before)
        os.close(read_fd)
        os.close(write_fd)


def test_partial_files_of_a_killed_run_are_swept(tmp_path: Path) -> None:
    work = WorkDir(tmp_path / "work")
    task = work.task_dir("t1")
    task.mkdir(parents=True)
    (task / ".update.safetensors.abc123.tmp").write_bytes(b"half")
    (task / "global.safetensors").write_bytes(b"whole")
    (work.root / ".state.json.x1.tmp").write_bytes(b"{")
    assert work.remove_partial_files() == 2
    assert sorted(p.name for p in work.root.rglob("*") if p.is_file()) == ["global.safetensors"]
    assert WorkDir(tmp_path / "missing").remove_partial_files() == 0
