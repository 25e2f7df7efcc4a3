"""``fedseg site adapt``: an outside hospital adapts the federation's routed model to its own scans.

Downloads the experiment's routing bundle (global model + shared personal models), builds the
routed U-Net, adapts its routers and norm layers on the site's unlabelled scans (labels are never
read) and saves ``routed/<experiment_id>.safetensors`` atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from data_specs.constants import SplitName
from data_specs.errors import DataSpecError
from personalization.errors import PersonalizationError
from site_agent.client import AggregatorClient
from site_agent.errors import ModelMismatchError, TrainingError, WorkDirError
from site_agent.workdir import WorkDir

log = logging.getLogger(__name__)


def adapt_experiment(
    client: AggregatorClient,
    workdir: WorkDir,
    experiment_id: str,
    manifest_path: str | Path,
    *,
    steps: int = 50,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[Path, object]:
    """Download, adapt and save the routed model of an experiment.

    Args:
        client: an enrolled aggregator client of a site granted the experiment.
        workdir: the outside site's work dir.
        experiment_id: the experiment. Example: ``"exp-1"``.
        manifest_path: the outside site's manifest; its test split (or, if none, its training
            split) supplies the unlabelled scans. Example: ``"outside/dataset.json"``.
        steps: adaptation steps. Default 50.
        lr: Adam learning rate of the routers and norm layers. Default 1e-3.
        seed: seed of the adaptation. Default 0.
        device: where to adapt. Default ``"cpu"``.

    Returns:
        ``(path of the routed model, AdaptReport)``.

    Raises:
        ModelMismatchError: the routing bundle is malformed or does not fit its spec.
        TrainingError: no scans, or the adaptation refused them.
        WorkDirError: the routed model cannot be saved.
    """
    from data_specs.manifest import load_manifest
    from personalization.outside import (
        AdaptConfig,
        adapt,
        build_routed_model,
        decode_routing_bundle,
        save_routed,
    )
    from site_agent.datasets import load_split

    data = client.routing_bundle(experiment_id)
    try:
        bundle = decode_routing_bundle(data)
    except (DataSpecError, PersonalizationError) as exc:
        raise ModelMismatchError(f"routing bundle of {experiment_id}: {exc}") from exc
    manifest = load_manifest(manifest_path)
    split = SplitName.TEST if SplitName.TEST in manifest.declared_splits() else SplitName.TRAINING
    scans = load_split(manifest, bundle.spec, split, train=False, seed=seed)
    if scans is None or len(scans) == 0:  # type: ignore[arg-type]
        raise TrainingError("the outside manifest lists no scans to adapt on")
    loader = DataLoader(scans, batch_size=1, shuffle=False, num_workers=0)
    # Torch tensors, not numpy: 0-d buffers (num_batches_tracked) keep their shape this way.
    experts = [{k: torch.from_numpy(np.array(v)) for k, v in e.items()} for e in bundle.experts]
    try:
        model = build_routed_model(bundle.spec, experts, seed=seed).to(device)
        report = adapt(model, loader, AdaptConfig(steps=steps, lr=lr, seed=seed))
    except PersonalizationError as exc:
        raise TrainingError(f"adaptation refused: {exc}") from exc
    path = workdir.routed_path(experiment_id)
    workdir.ensure(path.parent)
    try:
        save_routed(path, model.cpu())
    except OSError as exc:
        raise WorkDirError(f"cannot save the routed model {path}: {exc.strerror}") from exc
    except PersonalizationError as exc:
        raise TrainingError(f"the adapted model is unusable: {exc}") from exc
    log.info("routed model of %s adapted over %d experts", experiment_id, bundle.num_experts)
    return path, report
