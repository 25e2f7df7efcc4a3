"""The site work dir (docs/architecture.md): its layout, the site token, and restart-safe state."""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import IO

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from data_specs.files import atomic_write_bytes, atomic_writer, fsync_dir, fsync_file
from data_specs.wire import SiteMetrics, TaskAssignment
from site_agent.errors import WorkDirError

# Server-supplied ids become path components: only plain names, never "..", "/" or "~".
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class TaskPhase(StrEnum):
    """How far the agent got with the task in ``state.json``."""

    ASSIGNED = "assigned"
    DOWNLOADED = "downloaded"
    TRAINED = "trained"
    UPLOADED = "uploaded"


class TaskState(BaseModel):
    """Contents of ``state.json``: the task in progress and what is already on disk.

    Args:
        task: the assignment as received.
        phase: ``assigned`` → ``downloaded`` (global model verified on disk, not fsynced: a
            restart hashes it again) → ``trained`` (update, personal model and codec state
            on disk, fsynced) → ``uploaded`` (receipt on disk).
        update_sha256: sha256 of ``update.safetensors`` once trained. Default None.
        num_samples: training samples behind the update. Default 0.
        metrics: aggregate metrics sent with the update. Default None.
    """

    model_config = ConfigDict(extra="forbid")

    task: TaskAssignment
    phase: TaskPhase
    update_sha256: str | None = None
    num_samples: int = 0
    metrics: SiteMetrics | None = None


def safe_id(value: str, *, what: str = "id") -> str:
    """Refuse a server-supplied id that is not a plain file name.

    Args:
        value: the id. Example: ``"task-0001"``.
        what: what the id names, for the message. Default ``"id"``.

    Raises:
        WorkDirError: the id holds path separators, starts with a dot, or is too long.
    """
    if not _SAFE_ID.match(value):
        raise WorkDirError(
            f"refusing {what} {value[:40]!r}: expected letters, digits, '_', '.', '-'"
        )
    return value


class WorkDir:
    """Paths and safe writes inside one site work dir.

    Args:
        root: the work dir; created (mode 0700) on first write. Example: ``Path("site_work")``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- layout ---------------------------------------------------------------------------
    @property
    def token_path(self) -> Path:
        return self.root / "site_token"

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    @property
    def tensorboard_dir(self) -> Path:
        return self.root / "tensorboard"

    def task_dir(self, task_id: str) -> Path:
        return self.root / "tasks" / safe_id(task_id, what="task id")

    def global_path(self, experiment_id: str) -> Path:
        return self.root / "global" / f"{safe_id(experiment_id, what='experiment id')}.safetensors"

    def routed_path(self, experiment_id: str) -> Path:
        return self.root / "routed" / f"{safe_id(experiment_id, what='experiment id')}.safetensors"

    def routing_path(self, experiment_id: str) -> Path:
        """The routing bundle as downloaded by ``fedseg site adapt`` (an outside site's models)."""
        return self.root / "routing" / f"{safe_id(experiment_id, what='experiment id')}.safetensors"

    def choice_path(self, experiment_id: str) -> Path:
        """What ``fedseg site adapt`` chose to use, and why (JSON)."""
        return self.root / "adapted" / f"{safe_id(experiment_id, what='experiment id')}.json"

    def chosen_path(self, experiment_id: str) -> Path:
        """The plain model ``fedseg site adapt`` fell back to, with its batch-norm statistics."""
        return self.root / "adapted" / f"{safe_id(experiment_id, what='experiment id')}.safetensors"

    def personal_dir(self, experiment_id: str) -> Path:
        return self.root / "personal" / safe_id(experiment_id, what="experiment id")

    def personal_path(self, experiment_id: str, round_: int) -> Path:
        return self.personal_dir(experiment_id) / f"round_{round_}.safetensors"

    def local_path(self, experiment_id: str) -> Path:
        """The last locally trained model (FedBN keeps its norm layers from it)."""
        return self.root / "local" / f"{safe_id(experiment_id, what='experiment id')}.safetensors"

    def codec_state_path(self, experiment_id: str) -> Path:
        """Error-feedback memory of a top-k style update codec, one per experiment."""
        return (
            self.root
            / "codec_state"
            / f"{safe_id(experiment_id, what='experiment id')}.safetensors"
        )

    def latest_personal(self, experiment_id: str) -> Path | None:
        """The personal model of the highest round saved for an experiment, if any."""
        folder = self.personal_dir(experiment_id)
        rounds = []
        for p in folder.glob("round_*.safetensors") if folder.is_dir() else ():
            with_round = p.stem.removeprefix("round_")
            if with_round.isdigit():
                rounds.append((int(with_round), p))
        return max(rounds)[1] if rounds else None

    # -- writes ---------------------------------------------------------------------------
    def ensure(self, folder: Path | None = None) -> Path:
        """Create the work dir (0700) or a folder inside it; return the folder."""
        target = folder or self.root
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            target.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkDirError(_describe_os_error(exc, target)) from exc
        return target

    def write_bytes(
        self, path: Path, data: bytes | memoryview, *, mode: int = 0o600, durable: bool = True
    ) -> None:
        """Write a file atomically; a full disk leaves the old file (or none), never half of one.

        Args:
            path: the file.
            data: its bytes.
            mode: permission bits. Default 0o600.
            durable: fsync it (``data_specs.files.atomic_writer``). Default True.

        Raises:
            WorkDirError: the write failed, with a message naming the cause (e.g. disk full).
        """
        self.ensure(path.parent)
        try:
            atomic_write_bytes(path, data, mode=mode, durable=durable)
        except OSError as exc:
            raise WorkDirError(_describe_os_error(exc, path)) from exc

    @contextmanager
    def open_atomic(
        self, path: Path, *, mode: int = 0o600, durable: bool = True
    ) -> Iterator[IO[bytes]]:
        """``atomic_writer`` with the work dir's error messages (for streamed downloads)."""
        self.ensure(path.parent)
        try:
            with atomic_writer(path, mode=mode, durable=durable) as fh:
                yield fh
        except OSError as exc:
            raise WorkDirError(_describe_os_error(exc, path)) from exc

    def make_durable(self, path: Path, *, folder: bool = True) -> None:
        """fsync a file written with ``durable=False`` and, by default, its folder.

        Raises:
            WorkDirError: the file is gone or the fsync failed (e.g. disk full).
        """
        try:
            fsync_file(path)
        except OSError as exc:
            raise WorkDirError(_describe_os_error(exc, path)) from exc
        if folder:
            fsync_dir(path.parent)

    def link_file(self, source: Path, path: Path) -> None:
        """Make ``path`` another name of the finished file ``source`` (atomic, no data copied).

        For files written once and never changed in place (everything the atomic writers
        make). Where hard links are refused (another file system), the bytes are copied with
        ``write_bytes`` instead.

        Raises:
            FileNotFoundError: ``source`` is gone. WorkDirError: the link or copy failed.
        """
        self.ensure(path.parent)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.link.tmp")
        try:
            tmp.unlink(missing_ok=True)
            os.link(source, tmp)
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except FileNotFoundError:
            raise
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise WorkDirError(_describe_os_error(exc, path)) from exc
            self.write_bytes(path, source.read_bytes(), mode=source.stat().st_mode & 0o777)

    def remove_partial_files(self) -> int:
        """Delete temp files a killed run left behind (``.<name>.*.tmp`` of the atomic writers).

        Returns:
            How many were removed.
        """
        removed = 0
        for tmp in self.root.rglob(".*.tmp") if self.root.is_dir() else ():
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed

    def remove_finished_task_files(self, current: TaskState | None) -> int:
        """Delete the weights files (``*.safetensors``) of every task but ``current``'s.

        A finished task's large files are removed after its global model is kept, off the
        round's critical path (``TaskRunner.keep_later``); a crash in between leaves them. Its
        receipt stays as a record.

        Returns:
            How many task folders had files removed.
        """
        tasks = self.root / "tasks"
        keep = None if current is None else self.task_dir(current.task.task_id).name
        cleaned = 0
        for folder in sorted(tasks.iterdir()) if tasks.is_dir() else ():
            if not folder.is_dir() or folder.name == keep:
                continue
            found = [f for f in folder.glob("*.safetensors") if f.is_file()]
            for file in found:
                file.unlink(missing_ok=True)
            cleaned += bool(found)
        return cleaned

    # -- site token -----------------------------------------------------------------------
    def read_token(self) -> SecretStr | None:
        """The site token saved at enrollment, or None before the first enrollment."""
        try:
            text = self.token_path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise WorkDirError(_describe_os_error(exc, self.token_path)) from exc
        return SecretStr(text) if text else None

    def write_token(self, token: SecretStr) -> None:
        """Keep the site token (mode 0600, atomic)."""
        self.write_bytes(self.token_path, token.get_secret_value().encode(), mode=0o600)

    # -- task state -----------------------------------------------------------------------
    def load_state(self) -> TaskState | None:
        """The task in progress, or None. A corrupt ``state.json`` is an error, not a fresh start.

        Raises:
            WorkDirError: ``state.json`` exists but does not parse.
        """
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise WorkDirError(_describe_os_error(exc, self.state_path)) from exc
        try:
            return TaskState.model_validate_json(raw)
        except ValidationError as exc:
            raise WorkDirError(
                f"{self.state_path} is not a valid task state ({exc.error_count()} problems); "
                "move it away to drop the task in progress"
            ) from None

    def save_state(self, state: TaskState) -> None:
        """Record the task and its phase atomically; durably where a restart relies on it.

        ``assigned`` and ``downloaded`` are not fsynced: lost in a power cut, they only make
        the agent poll again (the aggregator hands out the same unreported task) and download
        again. The update's sha256 (``trained``) must survive one, so that a restart uploads
        the very same bytes. ``uploaded`` is fsynced only for secure aggregation: a plain
        upload lost with it is sent again, and the aggregator answers identical bytes with
        the first receipt (``duplicate``), even after its round closed.
        """
        durable = state.phase == TaskPhase.TRAINED or (
            state.phase == TaskPhase.UPLOADED and state.task.secagg is not None
        )
        self.write_bytes(self.state_path, state.model_dump_json(indent=2).encode(), durable=durable)

    def clear_state(self) -> None:
        """Forget the task in progress (after it is uploaded or dropped)."""
        try:
            self.state_path.unlink(missing_ok=True)
        except OSError as exc:
            raise WorkDirError(_describe_os_error(exc, self.state_path)) from exc

    def write_json(self, path: Path, payload: object, *, durable: bool = True) -> None:
        """Write JSON atomically (receipts); ``durable`` as ``write_bytes``."""
        self.write_bytes(
            path, json.dumps(payload, indent=2, sort_keys=True).encode(), durable=durable
        )


def _describe_os_error(exc: OSError, path: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return f"disk full while writing {path}: free some space; nothing half-written was left"
    if exc.errno == errno.EDQUOT:
        return f"disk quota exceeded while writing {path}; nothing half-written was left"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"no permission to write {path} (check the work dir's owner and mode)"
    return f"could not write {path}: {exc.strerror or exc}"
