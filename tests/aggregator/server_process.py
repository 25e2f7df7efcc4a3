"""``python -m aggregator serve`` in a subprocess on a free port (kill -9 and takeover tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.aggregator.e2e_helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    """``python -m aggregator serve`` in a subprocess on a free port."""

    def __init__(
        self, data_dir: Path, token_file: Path, log: Path, database_url: str | None = None
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "FEDSEG_AGG_ORCHESTRATOR_INTERVAL_S": "0.1",
            "FEDSEG_AGG_LOG_LEVEL": "WARNING",
        }
        if database_url is not None:
            env["FEDSEG_AGG_DATABASE_URL"] = database_url
        cmd = [
            sys.executable,
            "-m",
            "aggregator",
            "serve",
            "--data-dir",
            str(data_dir),
            "--port",
            str(self.port),
            "--admin-token-file",
            str(token_file),
        ]
        self._log = log.open("ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + 180  # generous: a loaded CI machine
        while True:
            assert self.proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self._log.close()
