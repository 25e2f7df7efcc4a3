"""Which names a segmentation's classes get: the site's manifest, else the model's bundle, else ``class k``.

The aggregator writes the experiment's ``class_names`` into every global-model and routing
bundle (``data_specs.class_names``); the site keeps those bundles as downloaded, so the names
are read back from the work dir's files (or from the ``--weights`` file) without loading any
tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from data_specs.class_names import foreground_names
from data_specs.errors import DataSpecError
from data_specs.weights.routing_bundle import read_class_names
from site_agent.federation.workdir import WorkDir

log = logging.getLogger(__name__)


def bundle_class_names(
    workdir: WorkDir, experiment_id: str | None, weights: Path | None = None
) -> tuple[str, ...]:
    """The class names (background first) the model's bundle carries; ``()`` when none does.

    Looked up in ``weights`` (when given), then in the experiment's global model, then in its
    routing bundle (an outside site's, or the one ``fedseg site adapt`` fetched).

    Args:
        workdir: the site work dir.
        experiment_id: the experiment; None: the only one the work dir knows (none: ``()``).
        weights: a model file given instead of the work dir's. Default None.
    """
    candidates: list[Path] = [weights] if weights is not None else []
    exp_id = experiment_id or _only_experiment(workdir)
    if exp_id is not None:
        candidates += [workdir.global_path(exp_id), workdir.routing_path(exp_id)]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            names = read_class_names(path)
        except (OSError, DataSpecError) as exc:  # names are a nicety: never fail a mask for them
            log.warning("class names unreadable from %s: %s", path.name, type(exc).__name__)
            continue
        if names:
            return names
    return ()


def _only_experiment(workdir: WorkDir) -> str | None:
    found = {p.stem for p in (workdir.root / "global").glob("*.json")}
    found |= {p.stem for p in (workdir.root / "routing").glob("*.safetensors")}
    return next(iter(found)) if len(found) == 1 else None


def segment_names(
    num_classes: int,
    *,
    labels: Mapping[str, str] | None,
    workdir: WorkDir,
    experiment_id: str | None,
    weights: Path | None = None,
) -> dict[int, str]:
    """Foreground class names for a legend and DICOM SEG segments.

    Args:
        num_classes: classes including background (``spec.out_channels``). Example: ``4``.
        labels: the site manifest's labels when one is configured, else None.
        workdir: the site work dir.
        experiment_id: the experiment (None: the only one known).
        weights: the ``--weights`` file, if any. Default None.

    Returns:
        ``{k: name}`` for ``k = 1..num_classes-1``.
    """
    names = bundle_class_names(workdir, experiment_id, weights)
    return foreground_names(num_classes, labels=labels, class_names=names)
