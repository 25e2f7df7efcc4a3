"""``FEDSEG_SITE_ENROLLMENT_TOKEN=-``: the token comes on standard input, so an agent can start
before its site is registered (and the token never sits in its environment)."""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from deploy.console.researcher_client import ResearcherClient
from deploy.launcher.local_aggregator import start_aggregator
from deploy.launcher.processes import LaunchError, free_port, process_group
from site_agent.errors import SiteSettingsError
from site_agent.federation import enrollment
from site_agent.federation.workdir import WorkDir
from site_agent.settings import SiteSettings


class _Client:
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.token: SecretStr | None = None

    def enroll(self, token: SecretStr, **_: object) -> object:
        self.tokens.append(token.get_secret_value())
        return type("R", (), {"site_token": "site-tok", "site_name": "a", "site_id": "s1"})()

    def set_token(self, token: SecretStr) -> None:
        self.token = token


def _settings(tmp_path: Path, token: str) -> SiteSettings:
    return SiteSettings(
        aggregator_url="https://agg.test",
        enrollment_token=SecretStr(token),
        work_dir=tmp_path / "work",
    )


def test_a_dash_reads_the_token_from_standard_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("tok-from-stdin\n"))
    client = _Client()
    workdir = WorkDir(tmp_path / "work")
    workdir.ensure()
    enrollment.enroll(client, _settings(tmp_path, "-"), workdir)  # type: ignore[arg-type]
    assert client.tokens == ["tok-from-stdin"]
    assert workdir.read_token() == SecretStr("site-tok")


def test_any_other_value_is_the_token_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("not this\n"))
    client = _Client()
    workdir = WorkDir(tmp_path / "work")
    workdir.ensure()
    enrollment.enroll(client, _settings(tmp_path, "plain-token"), workdir)  # type: ignore[arg-type]
    assert client.tokens == ["plain-token"]


def test_standard_input_closed_without_a_token_is_a_clear_settings_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    workdir = WorkDir(tmp_path / "work")
    workdir.ensure()
    with pytest.raises(SiteSettingsError, match="standard input closed"):
        enrollment.enroll(_Client(), _settings(tmp_path, "-"), workdir)  # type: ignore[arg-type]


def test_send_line_needs_a_stdin_pipe(tmp_path: Path) -> None:
    with process_group(tmp_path / "logs") as group:
        proc = group.start("echo", [sys.executable, "-c", "print('x' + input())"], stdin_pipe=True)
        proc.send_line("hello")
        assert proc.popen.wait(timeout=60) == 0
        deaf = group.start("deaf", [sys.executable, "-c", "pass"])
        with pytest.raises(LaunchError, match="without a stdin pipe"):
            deaf.send_line("hello")
    assert "xhello" in proc.log_path.read_text()


@pytest.mark.slow
def test_an_agent_started_before_the_aggregator_enrolls_with_the_token_sent_later(
    tmp_path: Path,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "FEDSEG_SITE_AGGREGATOR_URL": url,
        "FEDSEG_SITE_ALLOW_INSECURE_HTTP": "true",
        "FEDSEG_SITE_ENROLLMENT_TOKEN": "-",
        "FEDSEG_SITE_WORK_DIR": str(tmp_path / "site"),
        "FEDSEG_SITE_THREADS": "1",
    }
    argv = [sys.executable, "-m", "benchmarks.sleep_site", "--train-seconds", "0.1"]
    with process_group(tmp_path / "logs") as group, httpx.Client(timeout=60) as http:
        agent = group.start("site_a", argv, env=env, stdin_pipe=True)
        agg = start_aggregator(group, tmp_path / "agg", port=port, healthy_timeout_s=300)
        http.base_url = httpx.URL(url)
        researcher = ResearcherClient(http)
        researcher.create_researcher(agg.admin_token, "r")
        reg = researcher.register_site("site_a")
        assert agent.alive()  # it waited for the token
        agent.send_line(reg.enrollment_token)
        deadline = time.monotonic() + 120
        while not any(s.status == "enrolled" for s in researcher.sites()):
            group.check_alive()
            assert time.monotonic() < deadline, agent.log_tail()
            time.sleep(0.1)
        assert reg.enrollment_token not in Path(f"/proc/{agent.popen.pid}/environ").read_text(
            errors="replace"
        ) or not os.path.exists(f"/proc/{agent.popen.pid}")
