"""The background pre-import runs at the lowest CPU priority until the first task needs it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

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


def test_modules_are_imported_one_after_the_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "prewarm_seen.py").write_text("order = []\n")
    for name in ("prewarm_first", "prewarm_second"):
        (tmp_path / f"{name}.py").write_text(
            f"import prewarm_seen\nprewarm_seen.order.append({name!r})\n"
        )
    try:
        prewarm.start_prewarm("prewarm_first", "prewarm_second").join(30)
        assert sys.modules["prewarm_seen"].order == ["prewarm_first", "prewarm_second"]
    finally:
        for name in ("prewarm_seen", "prewarm_first", "prewarm_second"):
            sys.modules.pop(name, None)


@pytest.mark.slow
def test_after_the_prewarm_a_first_training_step_imports_nothing_heavy() -> None:
    """In a fresh process: what a first task's training step imports (the network, the loss,
    the optimizer) is all loaded by ``PREWARM_MODULES``, and would not be without them."""
    code = (
        "import sys\n"
        "from site_agent.federation import prewarm\n"
        "if sys.argv[1] == 'prewarm':\n"
        "    prewarm.start_prewarm().join(300)\n"
        "else:\n"
        "    import site_agent.federation.task_runner\n"
        "import torch\n"
        "from data_specs.task_spec import TaskSpec, build_unet\n"
        "from data_specs.wire import TrainConfig\n"
        "from site_agent.training.local_training import make_loss, make_optimizer\n"
        "before = set(sys.modules)\n"
        "model = build_unet(TaskSpec(out_channels=2))\n"
        "optimizer = make_optimizer(model, TrainConfig())\n"
        "loss = make_loss()(model(torch.zeros(1, 1, 32, 32)), torch.zeros(1, 1, 32, 32))\n"
        "loss.backward()\n"
        "optimizer.step()\n"
        "heavy = ('monai', 'torch._dynamo', 'scipy')\n"
        "print(sorted({m.split('.')[0] + ('._dynamo' if m.startswith('torch._dynamo') else '')\n"
        "              for m in set(sys.modules) - before if m.startswith(heavy)}))\n"
    )

    def new_heavy_modules(mode: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", code, mode],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return out.stdout.strip()

    assert new_heavy_modules("prewarm") == "[]"
    assert new_heavy_modules("task_runner only") == "['monai', 'scipy', 'torch._dynamo']"


@pytest.mark.parametrize(
    ("given", "imported"),
    [
        ({}, prewarm.PREWARM_MODULES),
        (
            {"prewarm": ("site_agent.federation.task_runner",)},
            ("site_agent.federation.task_runner",),
        ),
        ({"prewarm": ()}, None),
    ],
)
def test_a_fresh_agent_prewarms_the_modules_it_was_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, given: dict[str, Any], imported: Any
) -> None:
    from site_agent.federation import loop
    from site_agent.settings import SiteSettings

    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(loop.SiteAgent, "prepare", lambda self: None)
    monkeypatch.setattr(loop, "start_prewarm", lambda *modules: calls.append(modules))
    settings = SiteSettings(
        aggregator_url="http://127.0.0.1:1", allow_insecure_http=True, work_dir=tmp_path
    )
    with loop.SiteAgent(settings, **given) as agent:
        agent.stop_event.set()  # no polling: only the start-up
        agent.run()
    assert calls == ([] if imported is None else [imported])


def test_finish_prewarm_waits_until_every_import_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    _module(tmp_path, "blocked_prewarm_target")
    thread = prewarm.start_prewarm("blocked_prewarm_target")
    probe = _probe()
    releaser = threading.Timer(0.3, probe.release.set)  # type: ignore[attr-defined]
    releaser.start()
    try:
        prewarm.finish_prewarm(timeout=30)
        assert not thread.is_alive()  # the import ended before finish_prewarm returned
        assert probe.release.is_set()  # type: ignore[attr-defined]
        assert "blocked_prewarm_target" in sys.modules
        assert prewarm._started == []
    finally:
        probe.release.set()  # type: ignore[attr-defined]
        releaser.cancel()
        thread.join(30)
        sys.modules.pop("_prewarm_probe", None)
        sys.modules.pop("blocked_prewarm_target", None)


def test_the_first_task_waits_for_the_prewarm_before_its_runner_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from site_agent.federation import loop
    from site_agent.settings import SiteSettings

    events: list[str] = []
    monkeypatch.setattr(loop, "finish_prewarm", lambda: events.append("finish_prewarm"))
    settings = SiteSettings(
        aggregator_url="http://127.0.0.1:1", allow_insecure_http=True, work_dir=tmp_path
    )
    agent = loop.SiteAgent(settings, trainer_factory=lambda task: None)
    try:
        runner = agent._new_runner()
        events.append("runner")
        assert events == ["finish_prewarm", "runner"] and runner is not None
    finally:
        agent.close()


def test_threads_the_imports_start_get_the_process_priority_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As torch and MONAI do, the module starts a thread while it is imported: it inherits the
    prewarm's nice 19, and ``finish_prewarm`` gives it the process's priority."""
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    if own >= 19:
        pytest.skip("this test runs at nice 19 already")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "spawning_prewarm_target.py").write_text(
        "import threading\nstop = threading.Event()\nready = threading.Event()\n"
        "def _work():\n    global native_id\n    native_id = threading.get_native_id()\n"
        "    ready.set()\n    stop.wait(30)\n"
        "worker = threading.Thread(target=_work, daemon=True)\nworker.start()\nready.wait(30)\n"
    )
    prewarm.start_prewarm("spawning_prewarm_target").join(30)
    module = sys.modules["spawning_prewarm_target"]
    try:
        assert os.getpriority(os.PRIO_PROCESS, module.native_id) == 19  # inherited
        prewarm.finish_prewarm(timeout=30)
        after = os.getpriority(os.PRIO_PROCESS, module.native_id)
        if after != own and os.geteuid() != 0:
            pytest.skip("raising a thread's priority back needs RLIMIT_NICE or root here")
        assert after == own
    finally:
        module.stop.set()
        module.worker.join(30)
        sys.modules.pop("spawning_prewarm_target", None)
