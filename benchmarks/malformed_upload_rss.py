"""Peak server memory while refusing malformed uploads (a 95 MB safetensors header).

The outside probe saw +1.2 GB of RSS and 33 s for one such request. Here ``python -m aggregator
serve`` runs as a subprocess; after a warm-up (researcher, experiment, one small refused upload)
its ``VmHWM`` (peak RSS since start) is read from ``/proc/<pid>/status``, then ``CONCURRENT``
uploads at once stream a body that declares a 95,000,000-byte header followed by 95 MB of
spaces, and ``VmHWM`` is read again. Writes ``benchmarks/results/malformed_upload_rss.md``.

Run: ``python -m benchmarks.malformed_upload_rss [--concurrent 4]``.
"""

from __future__ import annotations

import argparse
import hashlib
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from benchmarks.aggregator_upload import ADMIN, API, ROOT, status_kib

HEADER_BYTES = 95_000_000
CHUNK = 1 << 20
RESULT = Path(__file__).resolve().parent / "results" / "malformed_upload_rss.md"


class Server:
    """``python -m aggregator serve`` on a free loopback port (waits up to ``start_s``)."""

    def __init__(self, work: Path, start_s: float = 600.0) -> None:
        import os
        import socket
        import subprocess
        import sys

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        token_file = work / "admin_token"
        token_file.write_text(ADMIN)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "FEDSEG_AGG_LOG_LEVEL": "WARNING"}
        self.command = f"python -m aggregator serve --port {self.port} --admin-token-file <file>"
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "aggregator", "serve", "--data-dir", str(work / "server"),
                "--port", str(self.port), "--admin-token-file", str(token_file),
            ],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=(work / "server.log").open("wb"),
        )  # fmt: skip
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + start_s
        while True:
            try:
                if httpx.get(self.base + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("aggregator did not start; see server.log")
            time.sleep(0.2)

    def stop(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def malformed_body() -> Iterator[bytes]:
    """8 bytes declaring a 95 MB header, then 95 MB of JSON whitespace, in 1 MiB chunks."""
    yield struct.pack("<Q", HEADER_BYTES) + b"{"
    left = HEADER_BYTES - 1
    block = b" " * CHUNK
    while left > 0:
        yield block[: min(CHUNK, left)]
        left -= CHUNK


def send_malformed(base: str, path: str, headers: dict[str, str], out: list[str]) -> None:
    """PUT the malformed body; record the status (or the transport error once refused)."""
    started = time.perf_counter()
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            r = client.put(
                path,
                content=malformed_body(),
                headers={**headers, "Content-Length": str(8 + HEADER_BYTES)},
            )
            out.append(f"{r.status_code} in {time.perf_counter() - started:.2f} s")
    except httpx.TransportError as exc:  # the server answered early and closed
        out.append(f"{type(exc).__name__} in {time.perf_counter() - started:.2f} s")


def measure(work: Path, concurrent: int) -> dict[str, object]:
    """Start a server, warm it up, send ``concurrent`` malformed uploads; the VmHWM figures."""
    server = Server(work)
    try:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=server.base, timeout=120) as client:
            token = client.post(f"{API}/researchers", json={"name": "rss"}, headers=admin).json()[
                "token"
            ]
            auth = {"Authorization": f"Bearer {token}"}
            spec = {
                "spatial_dims": 2,
                "channels": [4, 8],
                "strides": [2],
                "patch_size": [16, 16],
            }
            exp = client.post(
                f"{API}/experiments",
                json={"name": "rss", "spec": spec, "rounds": 1, "min_sites": 1},
                headers=auth,
            ).json()["id"]
            path = f"{API}/experiments/{exp}/initial-model"
            small = struct.pack("<Q", 2) + b"{}"
            warm = client.put(
                path,
                content=small,
                headers={**auth, "X-Content-SHA256": hashlib.sha256(small).hexdigest()},
            )
        headers = {**auth, "X-Content-SHA256": "0" * 64}
        before = status_kib("VmHWM", server.proc.pid)
        answers: list[str] = []
        threads = [
            threading.Thread(target=send_malformed, args=(server.base, path, headers, answers))
            for _ in range(concurrent)
        ]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
        after = status_kib("VmHWM", server.proc.pid)
        alive = server.proc.poll() is None
    finally:
        server.stop()
    return {
        "warm_up_status": warm.status_code,
        "vmhwm_before_kib": before,
        "vmhwm_after_kib": after,
        "delta_mib": (after - before) / 1024,
        "answers": answers,
        "seconds": seconds,
        "server_alive": alive,
        "command": server.command,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrent", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedseg-rss-") as tmp:
        result = measure(Path(tmp), args.concurrent)
    text = (
        "# Peak server RSS while refusing malformed uploads\n\n"
        f"Command: `python -m benchmarks.malformed_upload_rss --concurrent {args.concurrent}` "
        f"(server: `{result['command']}`).\n\n"
        f"{args.concurrent} uploads at once, each declaring a {HEADER_BYTES:,}-byte safetensors "
        "header and streaming 95 MB, to `PUT /experiments/{id}/initial-model`.\n\n"
        "| figure | value |\n|---|---|\n"
        f"| server VmHWM before | {result['vmhwm_before_kib']} KiB |\n"
        f"| server VmHWM after | {result['vmhwm_after_kib']} KiB |\n"
        f"| peak RSS increase | {result['delta_mib']:.1f} MiB (goal ≤ 50 MB) |\n"
        f"| answers | {', '.join(map(str, result['answers']))} |\n"  # type: ignore[call-overload]
        f"| wall time, all uploads | {result['seconds']:.2f} s |\n"
        f"| server still up | {result['server_alive']} |\n"
    )
    RESULT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
