"""Start-up to round 1 stays light: no request and no round transition imports torch or MONAI.

The first ``POST /experiments`` used to build the U-Net (torch + MONAI: seconds of CPU on the
start-up's critical path). A whole experiment runs here, in a fresh interpreter, through the
HTTP API with the real orchestrator, and the heavy packages must still be absent at the end.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a subprocess, a real server or real training
def test_a_whole_experiment_through_the_api_imports_neither_torch_nor_monai(
    tmp_path: Path,
) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from fastapi.testclient import TestClient
        from aggregator.api.app import create_app
        from aggregator.settings import AggregatorSettings
        from tests.aggregator.helpers import ADMIN_TOKEN, Federation

        settings = AggregatorSettings(
            data_dir={str(tmp_path / "agg")!r},
            admin_token=ADMIN_TOKEN,
            orchestrator_enabled=False,
            sqlite_synchronous="NORMAL",
        )
        with TestClient(create_app(settings)) as client:
            services = client.app.state.services
            fed = Federation.create(client, ["site-a", "site-b"])
            exp = fed.create_experiment(rounds=2, min_sites=2)
            fed.start(exp)
            services.orchestrator.step()
            for number in (1, 2):
                for name in ("site-a", "site-b"):
                    task = fed.next_task(name)
                    assert task is not None and task["round"] == number, task
                    r = fed.train_and_upload(name, task)
                    assert r.status_code == 200 and r.json()["accepted"], r.text
                services.orchestrator.step()
            assert fed.experiment(exp)["status"] == "completed"
            assert len(fed.rounds(exp)) == 2
        heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch", "monai"}})
        print("HEAVY", heavy)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HEAVY []" in proc.stdout, proc.stdout[-2000:]
