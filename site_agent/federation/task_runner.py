"""One task, phase by phase: download → train → upload → finish, restart-safe through state.json.

Each phase ends by writing its files atomically and then ``state.json``; a restart resumes at
the recorded phase. Once an update is on disk (``trained``), the very same bytes are uploaded,
however often the agent restarts, so the aggregator never sees two different updates of a task.
The ``trained`` phase is made durable on a thread while the upload starts; the upload's last
bytes wait for it (``held_body.HeldTail``), so the aggregator never holds an update that a
restart could replace. The downloaded global model is not fsynced: a restart re-checks its
sha256 (``RoundFiles.ensure_global``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from enum import StrEnum

from data_specs.round_timeline import SiteTimeline
from data_specs.task_spec import expected_tensors
from data_specs.weights.bundle import sha256_hex
from data_specs.wire import SiteMetrics, TaskAssignment, UpdateReceipt
from site_agent.background import done, on_thread
from site_agent.errors import (
    IntegrityError,
    ModelMismatchError,
    RoundClosedError,
    TaskRefusedError,
    TrainingError,
    WorkDirError,
)
from site_agent.federation.client import AggregatorClient
from site_agent.federation.privacy import FailureReason
from site_agent.federation.update_files import RoundFiles
from site_agent.federation.workdir import TaskPhase, TaskState, WorkDir
from site_agent.settings import SiteSettings
from site_agent.training.trainer import SiteTrainer

log = logging.getLogger(__name__)

TrainerFactory = Callable[[TaskAssignment], SiteTrainer]
"""Builds the trainer for a task (its spec, the site's data, seeded with the task's seed)."""


class TaskOutcome(StrEnum):
    """How a task ended for this site."""

    ACCEPTED = "accepted"  # uploaded, the aggregator accepted it (or already had it)
    REJECTED = "rejected"  # uploaded, the aggregator refused it (e.g. norm bound)
    DROPPED = "dropped"  # round closed, task gone, or the site reported a failure


@dataclass
class TaskRunner:
    """Drives one task through its phases.

    Args:
        settings: site settings (``share_personal``).
        workdir: the work dir.
        client: the aggregator client.
        trainer_factory: builds a trainer for a task.
    """

    settings: SiteSettings
    workdir: WorkDir
    client: AggregatorClient
    trainer_factory: TrainerFactory
    _timeline: SiteTimeline = field(default_factory=SiteTimeline, init=False, repr=False)
    _last_end: float | None = field(default=None, init=False, repr=False)
    _kept_later: RoundFiles | None = field(default=None, init=False, repr=False)

    def start(self, task: TaskAssignment) -> TaskOutcome:
        """Record a new task and run it."""
        now = time.monotonic()
        wait = None if self._last_end is None else now - self._last_end
        self._timeline = SiteTimeline(received_at=time.time(), poll_wait_s=wait)
        state = TaskState(task=task, phase=TaskPhase.ASSIGNED)
        self.workdir.save_state(state)
        return self.resume(state)

    def resume(self, state: TaskState) -> TaskOutcome:
        """Run a task from its recorded phase to the end; clears ``state.json`` when done.

        Raises:
            TokenRevokedError, AggregatorUnavailableError: the agent must stop; the state is
                kept for the next start.
            WorkDirError: the disk is full or the work dir unwritable (after reporting it).
        """
        task = state.task
        self.client.guard.allow_keys(task.spec_hash, expected_tensors(task.spec))
        files = RoundFiles(self.workdir, task)
        if state.phase != TaskPhase.ASSIGNED and self._timeline.received_at is None:
            self._timeline = SiteTimeline()  # resumed after a restart: earlier phases unknown
        prefetch: Future[tuple[SiteTrainer, float]] | None = None
        try:
            if state.phase == TaskPhase.ASSIGNED:
                self._check_spec(task)
                prefetch = self._prefetch(task)  # the data loads while the model downloads
                started = time.monotonic()
                files.download(self.client)
                self._timeline.download_s = time.monotonic() - started
                state = self._advance(state, TaskPhase.DOWNLOADED)
            if state.phase == TaskPhase.DOWNLOADED:
                files.ensure_global(self.client)  # after a restart: the unsynced download
                taken, prefetch = prefetch, None  # _train closes the trainer it takes
                trained, body = self._train(state, files, taken)
                persisting = self._persist(trained, files)
                try:
                    state = self._upload(trained, files, body=body, persisting=persisting)
                finally:  # never leave the task with its trained phase still being written
                    wait([persisting])
            elif state.phase == TaskPhase.TRAINED:
                state = self._upload(state, files)
            outcome = self._finish(state, files)
            self._end_task()
        except RoundClosedError as exc:
            log.info("task %s dropped: %s", task.task_id, exc)
            outcome = self._drop(files, None)
        except TaskRefusedError as exc:
            log.warning("task %s dropped: %s", task.task_id, exc)
            outcome = self._drop(files, None)
        except IntegrityError as exc:
            log.error("task %s: %s", task.task_id, exc)
            outcome = self._drop(files, FailureReason.MODEL_INTEGRITY)
        except ModelMismatchError as exc:
            log.error("task %s: %s", task.task_id, exc)
            outcome = self._drop(files, FailureReason.SPEC_MISMATCH)
        except TrainingError as exc:
            log.error("task %s: %s", task.task_id, exc)
            outcome = self._drop(files, FailureReason.TRAINING_FAILED)
        except WorkDirError:
            if state.phase in (TaskPhase.ASSIGNED, TaskPhase.DOWNLOADED):  # nothing sent yet
                self._report(task, FailureReason.STORAGE)
            raise
        finally:
            if prefetch is not None:  # the task ended before training: close what was built
                prefetch.add_done_callback(_close_prefetched)
        if outcome == TaskOutcome.DROPPED:
            self._end_task()
        return outcome

    def _end_task(self) -> None:
        self._last_end = time.monotonic()
        self._timeline = SiteTimeline()

    # -- phases -----------------------------------------------------------------------------
    def _prefetch(self, task: TaskAssignment) -> Future[tuple[SiteTrainer, float]]:
        """Build the task's trainer (datasets and model) on a second thread."""
        self._timeline.load_at = time.time()

        def build() -> tuple[SiteTrainer, float]:
            started = time.monotonic()
            trainer = self.trainer_factory(task)  # an error is re-raised where it is taken
            return trainer, time.monotonic() - started

        return on_thread(build, "fedseg-load")

    def _train(
        self,
        state: TaskState,
        files: RoundFiles,
        prefetch: Future[tuple[SiteTrainer, float]] | None = None,
    ) -> tuple[TaskState, bytes]:
        """Train, write the update (not yet fsynced: ``_persist``) and return the ``trained``
        state (not yet recorded) with the update's bytes."""
        task = state.task
        timeline = self._timeline
        if prefetch is None:  # resumed after a restart: load now
            timeline.load_at = time.time()
            started = time.monotonic()
            trainer = self.trainer_factory(task)
            timeline.load_s = time.monotonic() - started
        else:
            trainer, timeline.load_s = prefetch.result()
        validates = getattr(trainer, "val_data", None) is not None
        try:
            global_state = files.read_global()
            start = files.training_start(global_state)
            personal = files.previous_personal()
            keeping = self._keep_in_background()  # the last task's fsync, while this one trains
            timeline.train_at = time.time()
            started = time.monotonic()
            try:
                result = trainer.train_round(
                    start,
                    task.train,
                    local_keys=task.local_keys,
                    personal_state=personal,
                    tag=task.experiment_id,
                    round_=task.round,
                    total_rounds=task.total_rounds,
                )
            finally:
                wait([keeping])
            keeping.result()  # a full disk stops the agent as it did when kept in _finish
        finally:
            trainer.close()
        # train_round validates after training: its train_seconds split the call in two.
        total = time.monotonic() - started
        train_s = min(result.metrics.train_seconds or total, total)
        timeline.train_s = train_s
        timeline.validate_s = total - train_s if validates else None
        started = time.monotonic()
        body, sha = files.write_update(result, global_state)
        files.keep_statistics(result.state)
        files.save_personal(result.personal_state)
        timeline.encode_s = time.monotonic() - started
        scored = result.metrics.val_dice is not None or result.metrics.num_val_cases is not None
        metrics = result.metrics.model_copy(
            update={
                "val_round": task.round if scored else None,
                "timeline": timeline,
                "dp_unclipped": files.unclipped,
            }
        )
        state = state.model_copy(
            update={
                "phase": TaskPhase.TRAINED,
                "update_sha256": sha,
                "num_samples": result.num_samples,
                "metrics": metrics,
            }
        )
        return state, body

    def _persist(self, trained: TaskState, files: RoundFiles) -> Future[None]:
        """On a second thread: fsync the update, then record ``trained`` (fsynced)."""

        def write() -> None:  # an error is raised by the upload's gate and by _upload
            files.persist_update()
            self.workdir.save_state(trained)

        return on_thread(write, "fedseg-persist")

    def _upload(
        self,
        state: TaskState,
        files: RoundFiles,
        *,
        body: bytes | None = None,
        persisting: Future[None] | None = None,
    ) -> TaskState:
        """Upload the update: ``body`` while ``persisting`` records the trained phase, or
        (resumed) the file recorded by it."""
        task = state.task
        if body is None or persisting is None:
            body = files.read_update(state.update_sha256)
            persisting = done()
        metrics = state.metrics or SiteMetrics()
        if metrics.timeline is not None:  # resumed uploads keep what was measured before
            stamped = metrics.timeline.model_copy(update={"upload_at": time.time()})
            metrics = metrics.model_copy(update={"timeline": stamped})
        if self.settings.share_personal:
            # Before the update: once the last update of a round is in, the round closes and the
            # next task opens, and personal models are taken for a site's latest task only.
            self._share_personal(task, files)
        if (
            task.secagg is not None
        ):  # only a masked ring vector leaves (site_agent.federation.uploads.secagg_upload)
            persisting.result()  # the masked protocol's first step waits for the record
            files.ensure_global(self.client)
            receipt = self._upload_masked(task, files, body, state)
        else:
            receipt = self.client.upload_update(
                task.task_id,
                body,
                sha256=state.update_sha256 or sha256_hex(body),  # hashed as it was written
                num_samples=state.num_samples,
                metrics=metrics,
                ready=persisting.result,  # the last bytes wait for the durable record
            )
        persisting.result()  # a transport that read the body whole never called ready
        files.save_receipt(receipt)
        return self._advance(state, TaskPhase.UPLOADED)

    def _upload_masked(
        self, task: TaskAssignment, files: RoundFiles, body: bytes, state: TaskState
    ) -> UpdateReceipt:
        import numpy as np

        from site_agent.federation.uploads.secagg_upload import SecAggUpload, masked_input

        samples = state.num_samples or 1
        vector = masked_input(task, body, files.read_global(), samples, np.random.default_rng())
        return SecAggUpload(self.client, task).run(
            vector, num_samples=samples, metrics=state.metrics or SiteMetrics()
        )

    def _finish(self, state: TaskState, files: RoundFiles) -> TaskOutcome:
        task = state.task
        receipt = files.read_receipt()
        accepted = receipt is not None and receipt.accepted
        if receipt is not None and accepted:
            files.commit_codec_state()
            log.info(
                "task %s: update accepted%s",
                task.task_id,
                " (duplicate)" if receipt.duplicate else "",
            )
        else:
            reason = receipt.reason if receipt is not None else "no receipt"
            log.warning("task %s: update rejected by the aggregator: %s", task.task_id, reason)
        self.workdir.clear_state()
        self.keep_later(files)
        return TaskOutcome.ACCEPTED if accepted else TaskOutcome.REJECTED

    def keep_later(self, files: RoundFiles) -> None:
        """Keep ``files``' global model and remove its large files, but not now.

        ``keep_global`` fsyncs the global model (1.6 MB for a 2D U-Net) before linking it; done
        between the upload and the next poll, that write competed with the aggregator's
        aggregation and commit for the disk. It runs instead on a thread while the next task
        trains (``_train``), or at ``flush_kept`` (the agent stops, a simulation ends). Lost in
        a crash, the experiment keeps the previous round's global model, and the next start
        removes the task's large files (``WorkDir.remove_finished_task_files``).
        """
        self.flush_kept()  # at most one waits
        self._kept_later = files

    def flush_kept(self) -> None:
        """Do the keeping ``keep_later`` left, now (no-op when none waits).

        Raises:
            WorkDirError: the fsync or the link failed (e.g. disk full).
        """
        files, self._kept_later = self._kept_later, None
        if files is not None:
            files.keep_global()
            files.clean_up()

    def _keep_in_background(self) -> Future[None]:
        if self._kept_later is None:
            return done()
        return on_thread(self.flush_kept, "fedseg-keep")

    def _share_personal(self, task: TaskAssignment, files: RoundFiles) -> None:
        body = files.personal_bundle()
        if body is None:
            return
        try:
            self.client.share_personal(task.task_id, body, sha256=sha256_hex(body))
            log.info("task %s: personal model shared for outside routing", task.task_id)
        except (RoundClosedError, TaskRefusedError) as exc:
            log.warning("task %s: personal model not shared: %s", task.task_id, exc)

    # -- helpers ----------------------------------------------------------------------------
    def _advance(self, state: TaskState, phase: TaskPhase) -> TaskState:
        state = state.model_copy(update={"phase": phase})
        self.workdir.save_state(state)
        return state

    def _drop(self, files: RoundFiles, reason: FailureReason | None) -> TaskOutcome:
        if reason is not None:
            self._report(files.task, reason)
        files.discard()
        self.workdir.clear_state()
        return TaskOutcome.DROPPED

    def _report(self, task: TaskAssignment, reason: FailureReason) -> None:
        try:
            self.client.report_failure(task.task_id, reason)
        except (RoundClosedError, TaskRefusedError) as exc:
            log.info("task %s: failure report not taken: %s", task.task_id, exc)

    def _check_spec(self, task: TaskAssignment) -> None:
        if task.spec.spec_hash() != task.spec_hash:
            raise ModelMismatchError(
                f"task {task.task_id} names spec hash {task.spec_hash} but its spec hashes to "
                f"{task.spec.spec_hash()}"
            )


def _close_prefetched(future: Future[tuple[SiteTrainer, float]]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result()[0].close()
