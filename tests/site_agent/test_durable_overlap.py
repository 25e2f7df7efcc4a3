"""fsyncs off the round's path: the upload overlaps the durable trained phase, but never completes
before it; the downloaded global model is not fsynced, and a restart re-checks it by sha256."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from site_agent.federation.held_body import HeldTail
from site_agent.federation.task_runner import TaskOutcome, TaskRunner
from site_agent.federation.update_files import RoundFiles
from site_agent.federation.workdir import TaskPhase, WorkDir
from tests.site_agent.test_restart_and_failures import Killed, one_site

pytestmark = pytest.mark.slow


def _fsynced_names(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the files (and folders) fsynced from now on, in order."""
    names: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        names.append(os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1])
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return names


def test_held_tail_sends_the_last_bytes_only_after_ready() -> None:
    events: list[str] = []
    body = bytes(range(256)) * 1000
    stream = HeldTail(body, lambda: events.append("ready"), tail=100)
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        events.append(f"chunk {len(chunk)}")
    assert events == [f"chunk {len(body) - 100}", "ready", "chunk 100"]
    assert b"".join(chunks) == body
    assert b"".join(HeldTail(b"xy", lambda: None)) == b"xy"  # a body smaller than the tail

    def refuse() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        list(HeldTail(body, refuse))


def test_the_upload_overlaps_the_durable_write_but_never_completes_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with one_site(tmp_path) as site:
        real = RoundFiles.persist_update
        seen: dict[str, object] = {}

        def slow_disk(self: RoundFiles) -> None:
            deadline = time.monotonic() + 10
            while not site.sent("PUT", "/update") and time.monotonic() < deadline:
                time.sleep(0.01)
            seen["upload started"] = bool(site.sent("PUT", "/update"))
            time.sleep(0.5)  # the aggregator has all of the body but its tail meanwhile
            (rnd,) = site.agg.rounds(site.experiment_id)
            seen["recorded meanwhile"] = rnd["sites"][0]["update_sha256"]
            state = WorkDir(site.root / "work").load_state()
            seen["phase meanwhile"] = state.phase if state else None
            real(self)

        monkeypatch.setattr(RoundFiles, "persist_update", slow_disk)
        with site.agent() as agent:
            summary = agent.run(once=True)
        assert summary.outcomes == [TaskOutcome.ACCEPTED]
        assert seen == {
            "upload started": True,
            "recorded meanwhile": None,
            "phase meanwhile": TaskPhase.DOWNLOADED,
        }
        (rnd,) = site.agg.rounds(site.experiment_id)
        assert rnd["sites"][0]["status"] == "accepted"


def test_the_download_is_not_fsynced_and_the_kept_global_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with one_site(tmp_path) as site:
        names = _fsynced_names(monkeypatch)
        kept_at: list[int] = []
        real_keep = RoundFiles.keep_global

        def keep(self: RoundFiles) -> None:
            kept_at.append(len(names))
            real_keep(self)

        monkeypatch.setattr(RoundFiles, "keep_global", keep)
        with site.agent() as agent:
            assert agent.run(once=True).outcomes == [TaskOutcome.ACCEPTED]
        (at,) = kept_at
        assert not [n for n in names[:at] if "global.safetensors" in n]  # nothing on the path
        assert "global.safetensors" in names[at:]  # the very inode global/<id> becomes
        kept = site.root / "work" / "global" / f"{site.experiment_id}.safetensors"
        blob = site.agg.services.blobs.require(
            site.agg.experiment(site.experiment_id)["initial_model_sha256"]
        )
        assert kept.read_bytes() == blob.read_bytes()


def test_a_damaged_download_found_after_a_restart_is_downloaded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with one_site(tmp_path) as site:
        real_train = TaskRunner._train

        def killed(self: TaskRunner, *args: object, **kwargs: object) -> object:
            raise Killed  # a power cut right after the download was recorded

        monkeypatch.setattr(TaskRunner, "_train", killed)
        with pytest.raises(Killed), site.agent() as agent:
            agent.run(once=True)
        work = WorkDir(site.root / "work")
        state = work.load_state()
        assert state is not None and state.phase == TaskPhase.DOWNLOADED
        (download,) = (site.root / "work" / "tasks").rglob("global.safetensors")
        data = bytearray(download.read_bytes())
        data[-64:] = bytes(64)  # what an unsynced file may hold after a power cut
        download.write_bytes(bytes(data))
        trained_on: list[bytes] = []

        def train(self: TaskRunner, state: object, files: RoundFiles, *a: object) -> object:
            trained_on.append(files.global_path.read_bytes())
            return real_train(self, state, files, *a)  # type: ignore[arg-type]

        monkeypatch.setattr(TaskRunner, "_train", train)
        with site.agent() as agent:
            assert agent.run(once=True).outcomes == [TaskOutcome.ACCEPTED]
        # The first copy came with the task; the damaged one is fetched again on its own.
        assert len(site.sent("GET", "/model")) == 1
        blob = site.agg.services.blobs.require(
            site.agg.experiment(site.experiment_id)["initial_model_sha256"]
        )
        assert trained_on == [blob.read_bytes()]


def test_a_damaged_download_is_not_kept_as_the_experiments_global(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with one_site(tmp_path) as site:
        from site_agent.federation.client import AggregatorClient

        real_upload = AggregatorClient.upload_update

        def upload_then_killed(self: AggregatorClient, *args: object, **kwargs: object) -> None:
            real_upload(self, *args, **kwargs)  # type: ignore[arg-type]
            raise Killed  # the aggregator has the update; the receipt was never saved

        monkeypatch.setattr(AggregatorClient, "upload_update", upload_then_killed)
        with pytest.raises(Killed), site.agent() as agent:
            agent.run(once=True)
        monkeypatch.undo()
        (download,) = (site.root / "work" / "tasks").rglob("global.safetensors")
        download.write_bytes(bytes(download.stat().st_size))  # lost in a power cut
        with site.agent() as agent:
            assert agent.run(once=True).outcomes == [TaskOutcome.ACCEPTED]  # a duplicate
        assert not (site.root / "work" / "global" / f"{site.experiment_id}.safetensors").exists()
        assert not (site.root / "work" / "state.json").exists()


def test_a_failed_durable_write_aborts_the_upload_mid_body() -> None:
    """The gate's exception leaves the request unfinished: the server never sees the tail."""
    import socket

    received = bytearray()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(1 << 16):
                received.extend(chunk)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    body = b"u" * 300_000

    def refuse() -> None:
        deadline = time.monotonic() + 5
        while len(received) < 200_000 and time.monotonic() < deadline:
            time.sleep(0.01)  # the first part is on its way before the gate decides
        raise OSError("disk full")

    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
        request = http.build_request("PUT", "/x", content=body)
        request.stream = HeldTail(request.content, refuse)
        with pytest.raises(OSError, match="disk full"):
            http.send(request)
    thread.join(5)
    server.close()
    head, _, sent = bytes(received).partition(b"\r\n\r\n")
    assert b"content-length: 300000" in head.lower()
    assert sent == body[: len(body) - (1 << 16)]
