"""A starting site agent imports neither trio nor httpx's command-line client, and still talks HTTP."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

_START = """
import json, sys
if sys.argv[1] == "lean":
    from site_agent.lean_start import skip_unused_imports
    skip_unused_imports()
import httpx
from site_agent.federation.loop import SiteAgent  # the agent's own imports up to enrolment
httpx.Client().close()  # the real transport: httpcore, which tries trio
client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(204)))
status = client.get("http://aggregator/healthz").status_code
print(json.dumps({"status": status, "loaded": [m for m in ("trio", "httpx._main") if sys.modules.get(m)]}))
"""


def _start(mode: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", _START, mode], capture_output=True, text=True, check=True
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_the_agents_start_skips_trio_and_the_httpx_cli_and_http_still_works() -> None:
    assert _start("lean") == {"status": 204, "loaded": []}


def test_without_the_skip_those_modules_would_load() -> None:
    """The control: what the skip saves is really imported otherwise (when installed)."""
    installed = [
        m for m in ("trio", "click", "rich", "pygments") if importlib.util.find_spec(m) is not None
    ]
    if "trio" not in installed or len(installed) < 4:
        pytest.skip(f"trio or httpx's CLI extras are not installed here ({installed}): no control")
    assert _start("plain") == {"status": 204, "loaded": ["trio", "httpx._main"]}


def test_the_skip_leaves_modules_already_imported_alone() -> None:
    from site_agent.lean_start import skip_unused_imports

    present = {m for m in ("trio", "httpx._main") if m in sys.modules}
    marked = skip_unused_imports()
    try:
        assert set(marked).isdisjoint(present)
        assert all(sys.modules[m] is not None for m in present)
    finally:
        for name in marked:  # this test process keeps its modules importable
            del sys.modules[name]


def test_a_plain_http_agent_builds_no_tls_context_and_an_https_one_does(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    from site_agent.federation import client, trust
    from site_agent.settings import SiteSettings

    built: list[object] = []
    real = trust.agent_ssl_context

    def counting(*args: object, **kwargs: object) -> object:
        built.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trust, "agent_ssl_context", counting)
    plain = SiteSettings(
        aggregator_url="http://127.0.0.1:1", allow_insecure_http=True, work_dir=tmp_path
    )
    with client.make_http_client(plain) as http:
        assert str(http.base_url).startswith("http://127.0.0.1:1")
    assert built == []
    secure = SiteSettings(aggregator_url="https://127.0.0.1:1", work_dir=tmp_path)
    client.make_http_client(secure).close()
    assert len(built) == 1


def test_the_agents_loop_switches_the_paused_collector_back_on_after_enrolling(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    import gc

    from data_specs import startup_gc
    from site_agent.federation import loop
    from site_agent.settings import SiteSettings

    seen: list[bool] = []
    monkeypatch.setattr(loop.SiteAgent, "prepare", lambda self: seen.append(gc.isenabled()))
    monkeypatch.setattr(loop, "start_prewarm", lambda *modules: None)
    settings = SiteSettings(
        aggregator_url="http://127.0.0.1:1", allow_insecure_http=True, work_dir=tmp_path
    )
    was_enabled = gc.isenabled()
    gc.enable()
    try:
        startup_gc.pause()
        with loop.SiteAgent(settings) as agent:
            agent.stop_event.set()  # no polling: only the start-up
            agent.run()
        assert seen == [False]  # enrollment ran without the collector
        assert gc.isenabled() and not startup_gc.paused()
    finally:
        startup_gc.resume()
        gc.unfreeze()
        if not was_enabled:
            gc.disable()


_UP_TO_ENROLMENT = """
import json, sys
import benchmarks.sleep_site  # the benchmark agent's module, as ``python -m`` loads it
from site_agent.federation.loop import SiteAgent
from site_agent.federation.enrollment import enroll
from site_agent.settings import SiteSettings
from site_agent.training.threads import apply_site_threads
print(json.dumps([m for m in ("numpy", "torch", "monai") if m in sys.modules]))
"""


def test_an_agent_enrols_without_importing_numpy_or_torch() -> None:
    """Five agents starting beside the aggregator each paid about 0.12 CPU s for numpy
    before enrolling (issue 19's start-up); the weights and privacy modules import it on use."""
    out = subprocess.run(
        [sys.executable, "-c", _UP_TO_ENROLMENT], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == []
