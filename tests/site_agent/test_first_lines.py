"""Long site commands say what they start before torch or MONAI load."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("args", "first"),
    [
        (["evaluate"], "evaluating the global model on the test split"),
        (["fingerprint"], "computing the dataset fingerprint"),
        (["adapt", "--experiment", "e", "--manifest", "m.json"], "adapting experiment e"),
    ],
)
@pytest.mark.slow  # a subprocess, a real server or real training
def test_the_first_line_comes_before_heavy_imports(
    tmp_path: Path, args: list[str], first: str
) -> None:
    # The first line is written to stderr; at that moment torch and MONAI must not be loaded.
    script = textwrap.dedent(
        f"""
        import sys
        import typer
        real = typer.echo
        def echo(message=None, *a, **k):
            print(repr(message), "torch" in sys.modules, "monai" in sys.modules)
            raise SystemExit(0)
        typer.echo = echo
        from site_agent.cli import app
        app({args!r} + ["--work-dir", {str(tmp_path)!r}], standalone_mode=False)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    line = out.stdout.strip().splitlines()[0]
    assert first in line and line.endswith("False False"), line
