"""``fedseg <group> ...`` imports only that group: the first line of output comes without the
aggregator, the researchers' console or the launcher being imported."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

PROBE = """
import sys
from deploy.cli import main
try:
    main(["site", "--help"])
except SystemExit as exc:
    assert exc.code == 0, exc.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"aggregator", "httpx", "fastapi"}
               or m in {"deploy.console.console_cli", "deploy.launcher.launcher_cli", "torch", "monai"})
print("HEAVY=" + ",".join(heavy))
"""


@pytest.mark.slow  # a subprocess, a real server or real training
def test_a_group_command_imports_only_its_group() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    assert "Usage: fedseg site" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "HEAVY="


def test_the_root_help_still_lists_every_group_and_command() -> None:
    from deploy.cli import GROUPS, app

    out = CliRunner().invoke(app, ["--help"], terminal_width=200).output
    for name in [*GROUPS, "demo", "simulate", "experiments", "sites", "researchers"]:
        assert f" {name} " in out, name


def test_an_unknown_command_fails_with_the_root_usage() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "no-such-command"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "No such command" in done.stderr
