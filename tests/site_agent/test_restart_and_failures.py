"""Restart safety and bad input against a real aggregator: one upload per task, clear refusals."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from site_agent.errors import TokenRevokedError, WorkDirError
from site_agent.federation.client import AggregatorClient
from site_agent.federation.loop import SiteAgent
from site_agent.federation.privacy import FailureReason
from site_agent.federation.retry import Backoff
from site_agent.federation.task_runner import TaskOutcome
from site_agent.federation.workdir import TaskPhase, WorkDir
from tests.site_agent.conftest import TINY, write_site
from tests.site_agent.federation import LiveAggregator, live_aggregator
from tests.site_agent.test_federation_e2e import TRAIN, Recorder, agent_settings

pytestmark = pytest.mark.slow


class Killed(BaseException):
    """Stands for ``kill -9``: nothing in the agent catches it."""


@dataclass
class OneSite:
    agg: LiveAggregator
    root: Path
    site_id: str
    token: str
    experiment_id: str
    recorder: Recorder

    def agent(self) -> SiteAgent:
        """A fresh agent process on the same work dir (a restart)."""
        http = httpx.Client(
            base_url=self.agg.url, event_hooks={"request": [self.recorder]}, timeout=30
        )
        settings = agent_settings(self.root, self.agg.url, self.token)
        return SiteAgent(settings, http=http, backoff=Backoff(0.02, 0.05, 2))

    def sent(self, method: str, suffix: str) -> list[bytes]:
        return [b for m, p, _, b in self.recorder.requests if m == method and p.endswith(suffix)]


@contextmanager
def one_site(tmp_path: Path, *, rounds: int = 1) -> Iterator[OneSite]:
    with live_aggregator(tmp_path / "agg") as agg:
        root = tmp_path / "hospital"
        write_site(root / "data", n_train=4, n_val=1, n_test=1)
        site_id, token = agg.add_site("hospital")
        site = OneSite(agg, root, site_id, token, "", Recorder())
        # The hospital enrolls first: its standing consent (accept_experiments) lets the
        # experiment start.
        first = site.agent()
        first.prepare()
        first.close()
        site.recorder.requests.clear()
        site.experiment_id = agg.create_experiment(
            TINY, rounds=rounds, sites=[site_id], train=TRAIN
        )
        yield site


def test_killed_before_and_after_the_upload_resumes_with_the_same_bytes(
    tmp_path, monkeypatch
) -> None:
    with one_site(tmp_path) as site:
        real_upload = AggregatorClient.upload_update
        calls = {"n": 0}

        def upload(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 1:
                raise Killed  # killed with the update on disk, before sending it
            receipt = real_upload(self, *args, **kwargs)
            if calls["n"] == 2:
                raise Killed  # killed after the server took it, before the receipt was saved
            return receipt

        monkeypatch.setattr(AggregatorClient, "upload_update", upload)
        for _ in range(2):
            with pytest.raises(Killed), site.agent() as agent:
                agent.run(once=True)
            state = WorkDir(site.root / "work").load_state()
            assert state is not None and state.phase == TaskPhase.TRAINED
        with site.agent() as agent:
            summary = agent.run(once=True)
        assert summary.outcomes == [TaskOutcome.ACCEPTED]
        bodies = site.sent("PUT", "/update")
        assert len(bodies) == 2 and bodies[0] == bodies[1]  # the same bytes, sent twice
        site.agg.wait_for(site.experiment_id, "completed")
        (rnd,) = site.agg.rounds(site.experiment_id)
        assert [s["status"] for s in rnd["sites"]] == ["accepted"]
        assert rnd["sites"][0]["update_sha256"] == state.update_sha256
        assert not (site.root / "work" / "state.json").exists()


def test_round_closed_while_killed_drops_the_task(tmp_path, monkeypatch) -> None:
    with one_site(tmp_path) as site:

        def killed(self, *args, **kwargs):
            raise Killed

        monkeypatch.setattr(AggregatorClient, "upload_update", killed)
        with pytest.raises(Killed), site.agent() as agent:
            agent.run(once=True)
        monkeypatch.undo()
        site.agg.abort(site.experiment_id)
        with site.agent() as agent:
            summary = agent.run(max_tasks=1)
        assert summary.outcomes == [TaskOutcome.DROPPED]
        assert not (site.root / "work" / "state.json").exists()
        assert not list((site.root / "work" / "tasks").iterdir())


def test_corrupt_global_model_is_reported_and_never_trained_on(tmp_path) -> None:
    with one_site(tmp_path) as site:
        experiment = site.agg.experiment(site.experiment_id)
        blob = site.agg.services.blobs.require(experiment["initial_model_sha256"])
        os.chmod(blob, 0o644)
        data = bytearray(blob.read_bytes())
        data[-1] ^= 0xFF
        blob.write_bytes(bytes(data))
        with site.agent() as agent:
            summary = agent.run(once=True)
        assert summary.outcomes == [TaskOutcome.DROPPED]
        assert site.sent("PUT", "/update") == []
        assert len(site.sent("GET", "/model")) == 2  # one more try, then give up
        rnd = site.agg.rounds(site.experiment_id)[0]  # a retry attempt may follow
        assert rnd["sites"][0]["failure_reason"] == FailureReason.MODEL_INTEGRITY.value
        assert not list((site.root / "work").rglob("global.safetensors"))


def test_revoked_token_stops_the_agent(tmp_path) -> None:
    with one_site(tmp_path, rounds=2) as site:
        with site.agent() as agent:
            agent.run(once=True)
        site.agg.revoke(site.site_id)
        with pytest.raises(TokenRevokedError, match="revoked or unknown"), site.agent() as agent:
            agent.run(once=True)


def test_full_disk_while_saving_the_update_completes_no_upload(tmp_path, monkeypatch) -> None:
    with one_site(tmp_path) as site:
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            name = os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1]
            if name.startswith((".update.safetensors", "update.safetensors")):
                raise OSError(errno.ENOSPC, "No space left on device")
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        with pytest.raises(WorkDirError, match="disk full"), site.agent() as agent:
            agent.run(once=True)
        # The upload starts while the update is made durable; its last bytes wait for that,
        # so the aborted request never reached the aggregator whole.
        assert len(site.sent("PUT", "/update")) <= 1
        assert len(site.sent("POST", "/failure")) == 1
        (rnd,) = site.agg.rounds(site.experiment_id)[:1]
        assert rnd["sites"][0]["update_sha256"] is None
        assert rnd["sites"][0]["failure_reason"] == FailureReason.STORAGE.value
        work = site.root / "work"
        assert not list(work.rglob("update.safetensors")) and not list(work.rglob("*.tmp"))
        state = WorkDir(work).load_state()
        assert state is not None and state.phase == TaskPhase.DOWNLOADED  # trained never recorded


def test_compressed_updates_keep_their_error_feedback_memory(tmp_path) -> None:
    from safetensors.numpy import load as st_load

    train = {**TRAIN, "codec": {"name": "topk", "params": {"fraction": 0.1}, "min_size": 16}}
    with live_aggregator(tmp_path / "agg") as agg:
        root = tmp_path / "hospital"
        write_site(root / "data", n_train=4, n_val=1, n_test=0)
        site_id, token = agg.add_site("hospital")
        site = OneSite(agg, root, site_id, token, "", Recorder())
        with site.agent() as agent:
            agent.prepare()  # enroll with the hospital's standing consent first
            experiment_id = agg.create_experiment(TINY, rounds=2, sites=[site_id], train=train)
            site.experiment_id = experiment_id
            assert agent.run(max_tasks=2).outcomes == [TaskOutcome.ACCEPTED] * 2
        agg.wait_for(experiment_id, "completed")
    (body, _) = site.sent("PUT", "/update")
    payload = st_load(body)
    assert any(k.endswith("#topk_idx") for k in payload) and any("#" not in k for k in payload)
    memory = st_load((root / "work" / "codec_state" / f"{experiment_id}.safetensors").read_bytes())
    assert memory and any(abs(v).sum() > 0 for v in memory.values())


def test_an_in_process_agent_stops_when_asked(tmp_path) -> None:
    import threading
    import time

    with live_aggregator(tmp_path / "agg") as agg:
        root = tmp_path / "hospital"
        write_site(root / "data", n_train=2, n_val=1, n_test=0)
        _, token = agg.add_site("hospital")
        agent = SiteAgent(agent_settings(root, agg.url, token))
        done: list[object] = []
        thread = threading.Thread(target=lambda: done.append(agent.run()))
        thread.start()
        time.sleep(1.5)  # enrolled, long-polling with no experiment running
        agent.stop_event.set()
        thread.join(timeout=10)
        agent.close()
    assert not thread.is_alive() and done[0].tasks == 0
    assert (root / "work" / "site_token").is_file()
