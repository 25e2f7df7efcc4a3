"""The background pre-import runs at the lowest CPU priority until the first task needs it."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from site_agent.federation import prewarm

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice")


def _module(tmp_path: Path, name: str) -> None:
    """A module whose import blocks until the test releases it."""
    (tmp_path / f"{name}.py").write_text(
        "import threading\nstarted = threading.Event()\nrelease = threading.Event()\n"
        "import sys\nsys.modules['_prewarm_probe'] = sys.modules[__name__]\n"
        "started.set()\nrelease.wait(30)\n"
    )


def _probe() -> object:
    deadline = threading.Event()
    for _ in range(300):
        probe = sys.modules.get("_prewarm_probe")
        if probe is not None and probe.started.is_set():  # type: ignore[attr-defined]
            return probe
        deadline.wait(0.1)
    raise AssertionError("the pre-import never started")


def test_import_runs_at_lowest_priority_then_hurries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    _module(tmp_path, "slow_prewarm_target")
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    if own >= 19:
        pytest.skip("this test runs at nice 19 already: a lowered thread would look the same")
    thread = prewarm.start_prewarm("slow_prewarm_target")
    probe = _probe()
    try:
        assert thread.native_id is not None
        assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == 19
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own  # main untouched
        prewarm.hurry()
        after = os.getpriority(os.PRIO_PROCESS, thread.native_id)
    finally:
        probe.release.set()  # type: ignore[attr-defined]
        thread.join(30)
        sys.modules.pop("_prewarm_probe", None)
        sys.modules.pop("slow_prewarm_target", None)
    assert not thread.is_alive()
    if after != own and os.geteuid() != 0:
        pytest.skip("raising a thread's priority back needs RLIMIT_NICE or root here")
    assert after == own
    assert prewarm._threads == {}  # the finished thread is forgotten
