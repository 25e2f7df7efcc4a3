"""A site's own batch-norm running statistics under client-level DP (they never leave the site).

Under DP the norm layers' running statistics (``running_mean``, ``running_var``,
``num_batches_tracked``) are outside the clipped, noised update: the aggregator lists them in
the experiment's ``local_keys``, the site uploads zeros for them, and the global model keeps
its initial statistics (mean 0, variance 1). Each site keeps the statistics its own training
estimated, as FedBN does for whole norm layers, and uses them wherever it runs the global
model: as the start of the next round's training and when it evaluates or segments with the
global model (``site_agent.clinic.models.load_model``).

Stored per experiment as ``dp_statistics/<experiment_id>.safetensors`` in the work dir.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from data_specs.task_spec import TaskSpec
from data_specs.weights.unet_layout import statistic_keys_of
from site_agent.errors import WorkDirError
from site_agent.federation.workdir import WorkDir

log = logging.getLogger(__name__)
FOLDER = "dp_statistics"


def statistics_path(workdir: WorkDir, experiment_id: str) -> Path:
    """Where a site keeps its statistics of one experiment."""
    return workdir.root / FOLDER / f"{experiment_id}.safetensors"


def save_statistics(
    workdir: WorkDir, experiment_id: str, spec: TaskSpec, trained: Mapping[str, object]
) -> None:
    """Keep the running statistics of a trained state dict (tensors or arrays), atomically.

    Raises:
        WorkDirError: a statistic key is missing from ``trained`` or the file cannot be written.
    """
    from safetensors.numpy import save as st_save

    out: dict[str, np.ndarray] = {}
    for key in statistic_keys_of(spec):
        if key not in trained:
            raise WorkDirError(f"the trained model has no running statistic {key!r}")
        value = trained[key]
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        out[key] = np.array(array, order="C")  # keeps 0-d arrays 0-d
    if not out:
        return
    path = statistics_path(workdir, experiment_id)
    workdir.ensure(path.parent)
    workdir.write_bytes(path, st_save(out))


def load_statistics(workdir: WorkDir, experiment_id: str) -> dict[str, np.ndarray] | None:
    """The site's statistics of an experiment, or None when it kept none (not a DP experiment,
    or not trained yet).

    Raises:
        WorkDirError: the file exists but is not readable safetensors.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    path = statistics_path(workdir, experiment_id)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise WorkDirError(f"cannot read the site's DP statistics: {exc.strerror}") from exc
    try:
        return dict(st_load(data))
    except (SafetensorError, ValueError) as exc:
        raise WorkDirError(f"the site's DP statistics file {path.name} is damaged") from exc


def with_statistics(
    workdir: WorkDir, experiment_id: str, state: Mapping[str, Any]
) -> dict[str, Any]:
    """``state`` with the site's own running statistics in place of the global's.

    Keys the site holds no statistic for, and statistics whose shape differs (another spec),
    are left as in ``state``.
    """
    own = load_statistics(workdir, experiment_id)
    merged = dict(state)
    if own is None:
        return merged
    for key, value in own.items():
        current = merged.get(key)
        if current is not None and tuple(current.shape) == value.shape:
            merged[key] = value
    return merged
