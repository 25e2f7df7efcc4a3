"""The secure-aggregation round bench's helpers: the byte-counting relay and the site split."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.acdc_split import patient_of, split_hospitals
from benchmarks.tcp_relay import ByteCountingRelay
from data_specs.manifests.manifest import (
    CaseEntry,
    DatasetManifest,
    load_manifest,
    save_manifest,
)


class _Doubler(socketserver.BaseRequestHandler):
    """Reads until the client half-closes, then answers the payload twice (down = 2 × up)."""

    def handle(self) -> None:
        data = b""
        while chunk := self.request.recv(4096):
            data += chunk
        self.request.sendall(data + data)


@pytest.fixture
def doubler() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Doubler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(4096):
            got += chunk
    return got


def _wait_for(relay: ByteCountingRelay, expected: tuple[int, int]) -> tuple[int, int]:
    deadline = time.monotonic() + 10
    while relay.counts() != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return relay.counts()


def test_relay_passes_bytes_through_and_counts_each_way(doubler: int) -> None:
    with ByteCountingRelay(("127.0.0.1", doubler)) as relay:
        assert relay.counts() == (0, 0)
        assert _exchange(relay.port, b"abc") == b"abcabc"
        assert _wait_for(relay, (3, 6)) == (3, 6)
        big = bytes(range(256)) * 1000  # many relay chunks
        assert _exchange(relay.port, big) == big + big
        total = (3 + len(big), 6 + 2 * len(big))
        assert _wait_for(relay, total) == total
    with pytest.raises(OSError):
        _exchange(relay.port, b"closed")


def _hospital(folder: Path, patients: list[str], test: list[str]) -> Path:
    def entries(names: list[str]) -> list[CaseEntry]:
        return [
            CaseEntry(image=f"{p}_frame{f:02d}.nii.gz", label=f"{p}_frame{f:02d}_gt.nii.gz")
            for p in names
            for f in (1, 12)
        ]

    folder.mkdir(parents=True)
    manifest = DatasetManifest(
        name="ACDC-DCM",
        site_id="acdc_dcm",
        spatial_dims=2,
        modality={"0": "MRI"},
        labels={"0": "background", "1": "RV"},
        data_root=str(folder),
        training=entries(patients),
        validation=entries(["patient099"]),
        test=entries(test),
    )
    save_manifest(manifest, folder / "dataset.json")
    return folder / "dataset.json"


def test_split_deals_patients_round_robin_keeping_frames_together(tmp_path: Path) -> None:
    patients = [f"patient{i:03d}" for i in (5, 1, 3, 2, 4)]
    path = _hospital(tmp_path / "h", patients, ["patient010", "patient011"])
    sites = split_hospitals({"DCM": path}, 2, tmp_path / "out")
    assert list(sites) == ["DCM-1", "DCM-2"]
    one, two = (load_manifest(p) for p in sites.values())
    assert (one.site_id, two.site_id) == ("acdc_dcm_1", "acdc_dcm_2")
    assert sorted({patient_of(e) for e in one.training}) == [
        "patient001",
        "patient003",
        "patient005",
    ]
    assert sorted({patient_of(e) for e in two.training}) == ["patient002", "patient004"]
    assert len(one.training) == 6 and len(two.training) == 4  # both frames of each patient
    assert [patient_of(e) for e in one.test or []] == ["patient010", "patient010"]
    assert [patient_of(e) for e in two.test or []] == ["patient011", "patient011"]
    assert one.validation is None and one.data_root == str(tmp_path / "h")


def test_split_refuses_more_sites_than_patients(tmp_path: Path) -> None:
    path = _hospital(tmp_path / "h", ["patient001", "patient002"], [])
    with pytest.raises(ValueError, match="2 training patients cannot make 3 sites"):
        split_hospitals({"DCM": path}, 3, tmp_path / "out")
    with pytest.raises(ValueError, match="at least 1 site"):
        split_hospitals({"DCM": path}, 0, tmp_path / "out")
