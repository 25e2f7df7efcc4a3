"""The files of one task in the work dir: global model, update, receipt, codec state, personal model."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_specs.constants import BundleKind
from data_specs.errors import DataSpecError, SpecMismatchError
from data_specs.task_spec import expected_tensors
from data_specs.weights.bundle import BundleMeta, decode_bundle, encode_bundle, sha256_hex
from data_specs.wire import TaskAssignment, UpdateReceipt
from personalization.errors import PersonalizationError
from personalization.inside import PersonalModelStore
from site_agent.clinic.models import save_global
from site_agent.errors import ModelMismatchError, TrainingError, WorkDirError
from site_agent.federation.client import AggregatorClient
from site_agent.federation.uploads.dp_statistics import save_statistics, with_statistics
from site_agent.federation.workdir import WorkDir
from site_agent.training.trainer import TrainResult

log = logging.getLogger(__name__)


class RoundFiles:
    """``tasks/<task_id>/`` and the per-experiment files one task reads or writes.

    Args:
        workdir: the work dir.
        task: the task. Example: a ``TaskAssignment`` from ``GET /tasks/next``.
    """

    def __init__(self, workdir: WorkDir, task: TaskAssignment) -> None:
        self.workdir = workdir
        self.task = task
        self.folder = workdir.task_dir(task.task_id)
        self.global_path = self.folder / "global.safetensors"
        self.update_path = self.folder / "update.safetensors"
        self.receipt_path = self.folder / "receipt.json"
        self.codec_state_path = self.folder / "codec_state.safetensors"
        self.store = PersonalModelStore(workdir.root / "personal")
        self._global: dict[str, np.ndarray] | None = None
        self._verified = False  # the global file on disk hashed to the task's model_sha256
        self.unclipped: bool | None = None  # DP: adaptive clipping's bit of the last update

    # -- global model -----------------------------------------------------------------------
    def download(self, client: AggregatorClient) -> None:
        """Download and verify the global model (not fsynced: see ``ensure_global``).

        Raises:
            IntegrityError: sha256 mismatch. ModelMismatchError: another task spec.
        """
        client.download_model(self.task, self.global_path, self.workdir, durable=False)
        self._verified = True  # hashed while it was written, by this process
        self.read_global()  # refuse another spec before anything trains on it

    def global_intact(self) -> bool:
        """Whether the global model on disk is the task's (its sha256 is ``model_sha256``).

        The download is not fsynced; a power cut may leave the file missing, short or zeroed.
        A file verified by this process counts as intact without hashing it again.
        """
        if not self._verified:
            try:
                data = self.global_path.read_bytes()
            except OSError:
                return False
            self._verified = sha256_hex(data) == self.task.model_sha256.lower()
        return self._verified

    def ensure_global(self, client: AggregatorClient) -> None:
        """After a restart: download the global model again unless the one on disk is intact.

        Raises:
            IntegrityError, ModelMismatchError: as ``download``.
        """
        if not self.global_intact():
            log.info(
                "task %s: the global model on disk is not intact; downloading it again",
                self.task.task_id,
            )
            self.download(client)

    def keep_global(self) -> None:
        """Keep the task's global model as the experiment's latest (``global/<id>``).

        Called after the upload, off the round's critical path. The download is checked
        (after a restart) and fsynced first, since the kept copy is its very inode; a task
        resumed without an intact global file keeps the previous round's copy.
        """
        if not self.global_intact():
            return
        with contextlib.suppress(FileNotFoundError):
            self.workdir.make_durable(self.global_path, folder=False)  # link_file syncs global/
            save_global(
                self.workdir,
                self.task.experiment_id,
                self.task.round,
                self.task.spec,
                self.global_path,  # linked: the same verified bytes, no copy
            )

    def read_global(self) -> dict[str, np.ndarray]:
        """The verified global model's tensors (float16 downlinks cast back to float32).

        Decoded once per task; later calls return the same (read-only) arrays.

        Raises:
            ModelMismatchError: keys, shapes, dtypes or spec hash differ, or not a full model.
        """
        if self._global is not None:
            return self._global
        try:
            data = self.global_path.read_bytes()
        except OSError as exc:
            raise WorkDirError(f"cannot read the downloaded global model: {exc.strerror}") from exc
        try:
            bundle = decode_bundle(
                data, expected=expected_tensors(self.task.spec), spec_hash=self.task.spec_hash
            )
        except DataSpecError as exc:
            raise ModelMismatchError(f"global model of task {self.task.task_id}: {exc}") from exc
        if bundle.meta.kind != BundleKind.FULL or bundle.meta.codec != "none":
            raise ModelMismatchError(
                f"global model of task {self.task.task_id}: expected full uncompressed weights, "
                f"got kind={bundle.meta.kind} codec={bundle.meta.codec}"
            )
        self._global = bundle.tensors
        return bundle.tensors

    # -- update -----------------------------------------------------------------------------
    def write_update(
        self, result: TrainResult, global_state: dict[str, np.ndarray]
    ) -> tuple[bytes, str]:
        """Encode the update (full or diff, optionally compressed) and write it atomically.

        The file is not fsynced yet: ``persist_update`` does that, before the ``trained``
        phase is recorded (and so before the aggregator may hold the update).

        Returns:
            The bytes written and their sha256; once ``trained`` is recorded, the same bytes
            are uploaded after any restart.
        """
        train = self.task.train
        trained = {k: v.numpy() for k, v in result.state.items()}
        kind = train.update_kind
        if self.task.clip_norm is not None:  # client-level DP: clipped W − θ
            from site_agent.federation.uploads.dp_upload import clipped_diff

            clipped = clipped_diff(trained, global_state, self.task)
            tensors, kind, self.unclipped = clipped.tensors, BundleKind.DIFF, clipped.unclipped
        elif kind == BundleKind.DIFF:
            tensors = {k: (v - global_state[k]).astype(v.dtype) for k, v in trained.items()}
        else:
            tensors = trained
        codec, codec_params = "none", dict[str, Any]()
        if train.codec.name != "none":
            tensors, codec_params = self._compress(tensors, global_state, kind)
            codec, kind = train.codec.name, BundleKind.DIFF  # codecs compress W − θ
        meta = BundleMeta(
            spec_hash=self.task.spec_hash,
            round=self.task.round,
            kind=kind,
            num_samples=result.num_samples,
            codec=codec,
            codec_params=codec_params,
        )
        try:
            body = encode_bundle(tensors, meta)
        except DataSpecError as exc:
            raise TrainingError(f"the trained model cannot be sent: {exc}") from exc
        self.workdir.write_bytes(self.update_path, body, durable=False)
        return body, sha256_hex(body)

    def persist_update(self) -> None:
        """fsync the update ``write_update`` wrote, and the task folder.

        Raises:
            WorkDirError: the fsync failed (e.g. disk full); the update file is removed.
        """
        try:
            self.workdir.make_durable(self.update_path)
        except WorkDirError:
            with contextlib.suppress(OSError):
                self.update_path.unlink()
            raise

    def _compress(
        self, tensors: dict[str, np.ndarray], global_state: dict[str, np.ndarray], kind: BundleKind
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        from site_agent.federation.uploads.compression import compress_update

        return compress_update(
            tensors,
            global_state,
            kind,
            self.task,
            state_in=self.workdir.codec_state_path(self.task.experiment_id),
            state_out=self.codec_state_path,
            workdir=self.workdir,
        )

    def read_update(self, expected_sha: str | None) -> bytes:
        """The update written in the trained phase, checked against its recorded sha256.

        Raises:
            TrainingError: the file is gone or changed; the task is dropped rather than
                uploading a different update.
        """
        try:
            body = self.update_path.read_bytes()
        except OSError:
            body = b""
        if not body or sha256_hex(body) != expected_sha:
            raise TrainingError(
                f"the update of task {self.task.task_id} is missing or damaged on disk; "
                "dropping the task rather than uploading a different update"
            )
        return body

    def save_receipt(self, receipt: UpdateReceipt) -> None:
        """Keep the aggregator's receipt of the upload (read by ``read_receipt`` after a restart).

        fsynced only under secure aggregation, like the ``uploaded`` state
        (``WorkDir.save_state``): a plain receipt lost in a power cut is asked for again.
        """
        durable = self.task.secagg is not None
        self.workdir.write_json(self.receipt_path, receipt.model_dump(mode="json"), durable=durable)

    def read_receipt(self) -> UpdateReceipt | None:
        """The aggregator's receipt saved after the upload, if any."""
        try:
            return UpdateReceipt.model_validate_json(self.receipt_path.read_bytes())
        except (OSError, ValueError):
            return None

    def commit_codec_state(self) -> None:
        """Make this round's error-feedback memory the experiment's (after acceptance only)."""
        if self.codec_state_path.is_file():
            target = self.workdir.codec_state_path(self.task.experiment_id)
            self.workdir.ensure(target.parent)
            try:
                os.replace(self.codec_state_path, target)
            except OSError as exc:
                raise WorkDirError(f"cannot keep the codec state: {exc.strerror}") from exc

    # -- DP running statistics (site_agent.federation.uploads.dp_statistics) -----------------
    def training_start(self, global_state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What training starts from: the global model, under DP with the site's own statistics."""
        if self.task.clip_norm is None:
            return global_state
        return with_statistics(self.workdir, self.task.experiment_id, global_state)

    def keep_statistics(self, trained: dict[str, torch.Tensor]) -> None:
        """Under DP, keep the running statistics this round's training estimated."""
        if self.task.clip_norm is None:
            return
        save_statistics(self.workdir, self.task.experiment_id, self.task.spec, trained)

    # -- personal model ---------------------------------------------------------------------
    def previous_personal(self) -> dict[str, torch.Tensor] | None:
        """The personal model from before this round (a restart never reads its own round's)."""
        try:
            rounds = [r for r in self.store.rounds(self.task.experiment_id) if r < self.task.round]
            if not rounds:
                return None
            return self.store.load(self.task.experiment_id, rounds[-1])
        except PersonalizationError as exc:
            raise WorkDirError(f"the stored personal model is unreadable: {exc}") from exc

    def save_personal(self, state: dict[str, torch.Tensor] | None) -> None:
        """Keep this round's personal model, pruning older rounds."""
        if state is None:
            return
        try:
            self.store.save(self.task.experiment_id, self.task.round, state)
            self.store.prune(self.task.experiment_id, keep=2)
        except OSError as exc:
            raise WorkDirError(f"cannot save the personal model: {exc.strerror}") from exc
        except PersonalizationError as exc:
            raise WorkDirError(f"cannot save the personal model: {exc}") from exc

    def personal_bundle(self) -> bytes | None:
        """This round's personal model as a full weights bundle, or None when there is none."""
        try:
            state = self.store.load(self.task.experiment_id, self.task.round)
        except PersonalizationError:
            return None
        tensors = {k: v.numpy() for k, v in state.items()}
        meta = BundleMeta(spec_hash=self.task.spec_hash, round=self.task.round)
        try:
            return encode_bundle(tensors, meta)
        except (DataSpecError, SpecMismatchError) as exc:
            log.warning("personal model not shared: %s", exc)
            return None

    def discard(self) -> None:
        """Remove the task's folder, receipt included (the task was dropped)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def clean_up(self) -> None:
        """Remove the task's large files; the receipt stays as a record."""
        for path in (self.global_path, self.update_path, self.codec_state_path):
            with contextlib.suppress(FileNotFoundError):
                Path(path).unlink()
