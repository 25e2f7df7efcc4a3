"""The task runner's background work reuses idle daemon threads, and a stuck call blocks none."""

from __future__ import annotations

import threading
import time

import pytest

from site_agent.background import _DaemonThreads, on_thread


def test_an_idle_thread_takes_the_next_work() -> None:
    workers = _DaemonThreads()
    seen: list[int] = []
    for _ in range(3):
        done = threading.Event()
        workers.submit(lambda done=done: (seen.append(threading.get_ident()), done.set()))  # type: ignore[misc]
        assert done.wait(5)
        deadline = time.monotonic() + 5
        while workers._idle == 0 and time.monotonic() < deadline:  # it goes idle after the work
            time.sleep(0.001)
    assert len(set(seen)) == 1  # one thread started, then reused


def test_a_stuck_call_does_not_hold_up_the_next() -> None:

    release = threading.Event()
    stuck = on_thread(lambda: release.wait(10), "fedseg-stuck")
    other = on_thread(lambda: threading.current_thread().name, "fedseg-other")
    assert other.result(timeout=5) == "fedseg-other"  # ran on another thread meanwhile
    assert not stuck.done()
    release.set()
    assert stuck.result(timeout=5) is True
    # The task runner's threads never keep a stopping agent alive. (The aggregator's database
    # pool, "fedseg-db_N", is a ThreadPoolExecutor joined at exit; an earlier test in the same
    # process may have started one from the main thread.)
    runner = [t for t in threading.enumerate() if t.name.startswith("fedseg-")]
    assert all(t.daemon for t in runner if not t.name.startswith("fedseg-db")), runner


def test_an_exception_reaches_whoever_takes_the_result() -> None:
    def fail() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        on_thread(fail, "fedseg-test").result(timeout=5)
    assert on_thread(lambda: 7, "fedseg-test").result(timeout=5) == 7  # the thread lives on
