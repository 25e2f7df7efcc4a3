"""Client-level DP at the site: the update ``W − θ`` is clipped to the task's L2 norm before upload.

Clipping happens where the update is packed for upload, after training: the training loop is
untouched. The clipped update always travels as a difference (``kind=diff``), so the
aggregator's norm check sees exactly what was clipped. Keys the experiment keeps local (FedBN
norm layers; under DP always the norm layers' running statistics) travel as zeros: they are
never averaged, and sending their values would release them outside the guarantee.
"""

from __future__ import annotations

import numpy as np

from data_specs.errors import PrivacyError
from data_specs.privacy.dp import ClipResult, clip_update
from data_specs.wire import TaskAssignment
from site_agent.errors import TrainingError


def clipped_diff(
    trained: dict[str, np.ndarray], global_state: dict[str, np.ndarray], task: TaskAssignment
) -> ClipResult:
    """``clip(W − θ, task.clip_norm)`` by key, in the trained tensors' dtypes, with the norm
    before clipping and adaptive clipping's bit (``ClipResult.unclipped``).

    Raises:
        TrainingError: the update is not finite or the task has no clip norm.
    """
    if task.clip_norm is None:
        raise TrainingError(f"task {task.task_id} asks for no clipping")
    local = frozenset(task.local_keys)
    diff = {
        k: np.zeros_like(v) if k in local else (v - global_state[k]).astype(v.dtype)
        for k, v in trained.items()
    }
    try:
        return clip_update(diff, task.clip_norm, skip=local)
    except PrivacyError as exc:
        raise TrainingError(f"the update cannot be clipped for DP: {exc}") from exc
