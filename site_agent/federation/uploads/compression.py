"""Compressed uploads: the update ``W − θ`` through ``data_specs.update_codecs``, with its memory.

Codecs compress differences, so a compressed upload is always ``kind=diff``. Top-k style codecs
keep an error-feedback memory across rounds; it is read from the experiment's file and the new
one is written beside the task's update, becoming the experiment's only once the aggregator
accepted the upload (a dropped round leaves the memory as it was).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from data_specs.constants import BundleKind
from data_specs.errors import CodecError
from data_specs.wire import TaskAssignment
from site_agent.errors import TrainingError, WorkDirError
from site_agent.federation.workdir import WorkDir


def compress_update(
    tensors: dict[str, np.ndarray],
    global_state: dict[str, np.ndarray],
    kind: BundleKind,
    task: TaskAssignment,
    *,
    state_in: Path,
    state_out: Path,
    workdir: WorkDir,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Encode an update with the task's codec; write the new error-feedback memory.

    Args:
        tensors: the update as computed for ``kind`` (full weights or a difference).
        global_state: the round's global model, to turn full weights into a difference.
        kind: what ``tensors`` holds. Example: ``BundleKind.FULL``.
        task: the task (codec config and seed).
        state_in: the experiment's memory file (may not exist yet).
        state_out: where this round's memory goes (the task folder).
        workdir: for atomic writes with clear disk errors.

    Returns:
        ``(payload, codec_params)`` for a ``kind=diff`` bundle.

    Raises:
        TrainingError: the codec refused the update or its parameters.
        WorkDirError: the memory file is unreadable or cannot be written.
    """
    if kind == BundleKind.FULL:
        tensors = {k: (v - global_state[k]).astype(v.dtype) for k, v in tensors.items()}
    memory = _read_memory(state_in)
    from data_specs.update_codecs import encode_update

    try:
        payload, params = encode_update(
            tensors, task.train.codec, seed=task.train.seed, state=memory
        )
    except CodecError as exc:
        raise TrainingError(f"the update codec {task.train.codec.name!r} refused: {exc}") from exc
    if memory:
        workdir.write_bytes(
            state_out, st_save({k: np.ascontiguousarray(v) for k, v in memory.items()})
        )
    return payload, params


def _read_memory(path: Path) -> dict[str, np.ndarray]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise WorkDirError(f"cannot read the codec memory {path}: {exc.strerror}") from exc
    try:
        return dict(st_load(data))
    except (SafetensorError, ValueError) as exc:
        raise WorkDirError(
            f"the codec memory {path} is corrupt; move it away to start afresh"
        ) from exc
