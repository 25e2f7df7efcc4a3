"""``fedseg site adapt``: an outside hospital adapts the federation's routed model to its own scans.

Downloads the experiment's routing bundle (global model + shared personal models) and keeps it
in the work dir (``routing/<id>.safetensors``: ``fedseg site infer --model global`` and
``--model expert:<site>`` work from it alone), adapts the routed model on the site's unlabelled
scans with the safeguards of ``personalization.outside.safeguard`` (labels are never read), and
writes

- ``routed/<id>.safetensors``: the adapted routed model;
- ``adapted/<id>.json``: what the safeguard chose (global, a single expert or routed), and why;
- ``adapted/<id>.safetensors``: the chosen plain model when the choice is not the routed one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_specs.constants import SplitName
from data_specs.errors import DataSpecError
from personalization.errors import PersonalizationError
from site_agent.errors import ModelMismatchError, TrainingError, WorkDirError
from site_agent.federation.client import AggregatorClient
from site_agent.federation.workdir import WorkDir

if TYPE_CHECKING:
    from data_specs.manifests.manifest import DatasetManifest
    from data_specs.task_spec import TaskSpec
    from personalization.outside.layers import Gate
    from personalization.outside.safeguard import SafeAdaptResult

log = logging.getLogger(__name__)

META_CHOSEN = "fedseg_chosen"


def adapt_experiment(
    client: AggregatorClient,
    workdir: WorkDir,
    experiment_id: str,
    manifest_path: str | Path,
    *,
    steps: int = 60,
    lr: float = 3e-3,
    seed: int = 0,
    gate: Gate = "softmax",
    device: str = "cpu",
) -> tuple[Path, SafeAdaptResult]:
    """Download the routing bundle, adapt safely, save the routed model and the choice.

    Args:
        client: an enrolled aggregator client of a site granted the experiment.
        workdir: the outside site's work dir.
        experiment_id: the experiment. Example: ``"exp-1"``.
        manifest_path: the outside site's manifest; its ``adaptation`` scans (else its test
            scans, else its training scans) are read, images only.
            Example: ``"outside/dataset.json"``.
        steps: adaptation steps at most (early stopping may end sooner). Default 60.
        lr: Adam learning rate of the routers and norm layers. Default 3e-3.
        seed: seed of the adaptation. Default 0.
        gate: the routers' gate, ``softmax`` or ``sigmoid``. Default ``softmax``.
        device: where to adapt. Default ``"cpu"``.

    Returns:
        ``(path of the routed model, SafeAdaptResult)``; ``result.record.message`` says what
        the site should use, in plain words.

    Raises:
        ModelMismatchError: the routing bundle is malformed or does not fit its spec.
        TrainingError: no scans, scans that do not fit the task, or the adaptation refused them.
        WorkDirError: the models cannot be saved.
    """
    from data_specs.weights.routing_bundle import read_class_prior
    from personalization.outside import decode_routing_bundle
    from personalization.outside.adapt import AdaptConfig
    from personalization.outside.safeguard import SafeAdaptConfig, safe_adapt

    view = adaptation_manifest(manifest_path)
    data = client.routing_bundle(experiment_id)
    try:
        bundle = decode_routing_bundle(data)
        prior = read_class_prior(data)
    except (DataSpecError, PersonalizationError) as exc:
        raise ModelMismatchError(f"routing bundle of {experiment_id}: {exc}") from exc
    workdir.write_bytes(workdir.routing_path(experiment_id), data)
    loader = unlabelled_scans(view, bundle.spec, seed=seed)
    config = SafeAdaptConfig(adapt=AdaptConfig(steps=steps, lr=lr, seed=seed), gate=gate)
    import torch

    names = [s.name for s in bundle.sources]
    experts = [{k: torch.from_numpy(v.copy()) for k, v in e.items()} for e in bundle.experts]
    try:
        with torch.device(device):
            result = safe_adapt(bundle.spec, experts, names, loader, config, class_prior=prior)
    except PersonalizationError as exc:
        raise TrainingError(f"adaptation refused: {exc}") from exc
    path = save_adaptation(workdir, experiment_id, result)
    log.info(
        "routed model of %s adapted over %d experts; choice: %s",
        experiment_id,
        bundle.num_experts,
        result.record.choice,
    )
    return path, result


def adaptation_manifest(manifest_path: str | Path) -> DatasetManifest:
    """The outside site's scans as a manifest view (images only, as unlabelled test cases).

    The manifest is validated against its files first (``fedseg data validate``).

    Raises:
        TrainingError: the manifest does not load, fails validation or lists no scans; one
            line naming the first problem.
    """
    from data_specs.manifests.manifest import load_manifest
    from data_specs.manifests.validate import validate_manifest

    report = validate_manifest(manifest_path, workers=1)
    if not report.ok:
        first = report.problems[0]
        raise TrainingError(
            f"the manifest {manifest_path} failed validation with {len(report.problems)} "
            f"problem(s), first: {first.file}: expected {first.expected}, found {first.found}; "
            f"run `fedseg data validate {manifest_path}` for all of them"
        )
    try:
        manifest = load_manifest(manifest_path)
    except DataSpecError as exc:
        raise TrainingError(str(exc)) from exc
    cases = manifest.adaptation_cases()
    if not cases:
        raise TrainingError(
            "the manifest lists no scans to adapt on: add an 'adaptation' list of images"
        )
    view = manifest.model_copy(
        update={"training": [], "test": cases, "validation": None, "adaptation": None}
    )
    return view.bind(manifest.folder or Path(manifest_path).parent)


def unlabelled_scans(view: DatasetManifest, spec: TaskSpec, *, seed: int = 0) -> list[Any]:
    """Image items ``{"image": (1, C, ...)}`` of ``adaptation_manifest``'s view for ``spec``.

    Raises:
        TrainingError: the scans do not fit the task or do not load.
    """
    from site_agent.training.datasets import load_split

    scans = load_split(view, spec, SplitName.TEST, train=False, seed=seed)
    if scans is None or len(scans) == 0:  # type: ignore[arg-type]
        raise TrainingError("the manifest lists no scans to adapt on")
    return [{"image": scans[i]["image"][None]} for i in range(len(scans))]  # type: ignore[arg-type,index]


def save_adaptation(workdir: WorkDir, experiment_id: str, result: SafeAdaptResult) -> Path:
    """Write the routed model, the choice record and (on a fallback) the chosen plain model."""
    from safetensors.torch import save as st_save

    from personalization.outside import save_routed

    path = workdir.routed_path(experiment_id)
    workdir.ensure(path.parent)
    try:
        save_routed(path, result.routed.cpu())
    except OSError as exc:
        raise WorkDirError(f"cannot save the routed model {path}: {exc.strerror}") from exc
    except PersonalizationError as exc:
        raise TrainingError(f"the adapted model is unusable: {exc}") from exc
    chosen = workdir.chosen_path(experiment_id)
    if result.record.choice != "routed":
        state = {k: v.detach().cpu().contiguous() for k, v in result.chosen.state_dict().items()}
        meta = {META_CHOSEN: result.record.choice, "spec": result.routed.spec.model_dump_json()}
        workdir.write_bytes(chosen, st_save(state, metadata=meta))
    elif chosen.exists():
        chosen.unlink()
    workdir.write_bytes(
        workdir.choice_path(experiment_id), result.record.model_dump_json(indent=2).encode()
    )
    return path
