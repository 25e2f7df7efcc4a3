"""The site's model files: the latest global model per experiment, and loading any model to use.

``global/<experiment_id>.safetensors`` holds the bundle exactly as downloaded; beside it,
``global/<experiment_id>.json`` records the task spec (a bundle carries only its hash), so
inference and the personal and routed models can rebuild the right network later.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError
from safetensors import SafetensorError
from torch import nn

from data_specs.errors import DataSpecError
from data_specs.task_spec import TaskSpec, build_unet, expected_tensors
from data_specs.weights.bundle import decode_bundle, read_header
from data_specs.weights.routing_bundle import ROUTING_MAX_HEADER_BYTES
from data_specs.weights.safetensors_header import read_file_header
from personalization.errors import PersonalizationError
from site_agent.errors import ModelMismatchError, WorkDirError
from site_agent.federation.workdir import WorkDir

# Also "expert:<site>": one expert of the routing bundle an outside site downloaded.
ModelKind = Literal["global", "personal", "routed"] | str


class ExperimentRecord(BaseModel):
    """The sidecar of a stored global model.

    Args:
        experiment_id: the experiment. Example: ``"exp-1"``.
        round: the round the global model was received for.
        spec: the task spec of the experiment.
    """

    experiment_id: str
    round: int
    spec: TaskSpec


def save_global(
    workdir: WorkDir, experiment_id: str, round_: int, spec: TaskSpec, data: bytes | Path
) -> None:
    """Keep the global model received for a round (atomic; sidecar written after the bundle).

    Args:
        workdir: the site work dir.
        experiment_id: the experiment.
        round_: the round the model was received for.
        spec: the experiment's task spec (the sidecar).
        data: the bundle's bytes, or a finished bundle file in the work dir, which is linked
            rather than copied (a round's 1.6 MB write and fsync saved).
    """
    if isinstance(data, Path):
        workdir.link_file(data, workdir.global_path(experiment_id))
    else:
        workdir.write_bytes(workdir.global_path(experiment_id), data, mode=0o600)
    record = ExperimentRecord(experiment_id=experiment_id, round=round_, spec=spec)
    sidecar = workdir.global_path(experiment_id).with_suffix(".json")
    workdir.write_bytes(sidecar, record.model_dump_json(indent=2).encode(), mode=0o600)


def known_experiments(workdir: WorkDir) -> list[str]:
    """Experiments this site holds a global or a routed model of, sorted."""
    found = {p.stem for p in (workdir.root / "global").glob("*.json")}
    found |= {p.stem for p in (workdir.root / "routed").glob("*.safetensors")}
    found |= {p.stem for p in (workdir.root / "routing").glob("*.safetensors")}
    return sorted(found)


def experiment_spec(workdir: WorkDir, experiment_id: str | None) -> tuple[str, TaskSpec]:
    """The experiment id and its task spec, from the global model's sidecar or the routed model.

    Args:
        workdir: the site work dir.
        experiment_id: the experiment; None picks the only one this site knows.

    Raises:
        WorkDirError: no such experiment, several to choose from, or a corrupt file.
    """
    if experiment_id is None:
        known = known_experiments(workdir)
        if len(known) != 1:
            choice = ", ".join(known) if known else "none yet (run the agent first)"
            raise WorkDirError(f"pass --experiment: this site knows experiments {choice}")
        experiment_id = known[0]
    sidecar = workdir.global_path(experiment_id).with_suffix(".json")
    routed = workdir.routed_path(experiment_id)
    try:
        if sidecar.is_file():
            return experiment_id, ExperimentRecord.model_validate_json(sidecar.read_bytes()).spec
        if routed.is_file():
            return experiment_id, TaskSpec.model_validate_json(_metadata(routed)["spec"])
        routing = workdir.routing_path(experiment_id)
        if routing.is_file():
            return experiment_id, TaskSpec.model_validate_json(_metadata(routing)["spec"])
    except (OSError, KeyError, ValidationError) as exc:
        raise WorkDirError(f"the model files of experiment {experiment_id} are unreadable") from exc
    raise WorkDirError(f"no model of experiment {experiment_id} in {workdir.root}")


def load_model(
    workdir: WorkDir,
    kind: ModelKind = "global",
    *,
    experiment_id: str | None = None,
    weights: Path | None = None,
    spec: TaskSpec | None = None,
    plain: bool = False,
) -> tuple[nn.Module, TaskSpec]:
    """Build the network to segment with, in eval mode, and the task spec it belongs to.

    Args:
        workdir: the site work dir.
        kind: ``global``, ``personal`` (latest IOP-FL / FedBN / Ditto model), ``routed``
            (what ``fedseg site adapt`` chose: the adapted routed model, or the model its
            safeguard fell back to) or ``expert:<site>`` (one model of the routing bundle).
            An outside site's ``global`` is the routing bundle's global model. Default
            ``global``.
        experiment_id: which experiment. Default None (the only one known).
        weights: a file to use instead of the work dir's: a fedseg weights bundle, a personal
            model file, or a routed model file. Default None.
        spec: the task spec of ``weights``, for a site that never trained in the experiment
            (an evaluator, a site not yet sampled). Default None (from the work dir's record).
        plain: build a global or personal model as ``site_agent.clinic.plain_unet`` (the same network
            without importing MONAI; routed models always use MONAI's). Default False.

    Raises:
        ModelMismatchError: the weights are of another task spec or not a model file.
        WorkDirError: the model or its experiment is missing.
    """
    if weights is None and (kind == "routed" or kind.startswith("expert:")):
        from site_agent.clinic.outside_models import load_outside_model

        found = load_outside_model(workdir, kind, experiment_id)
        if found is not None:
            return found
    if kind == "routed" or (weights is not None and "fedseg_routed" in _metadata(weights)):
        return _load_routed(workdir, experiment_id, weights)
    if weights is None and kind == "global":
        exp_id, spec = experiment_spec(workdir, experiment_id)
        if not workdir.global_path(exp_id).is_file():
            from site_agent.clinic.outside_models import load_outside_model

            found = load_outside_model(workdir, "expert:0", exp_id)
            if found is not None:
                return found
    if weights is None:
        exp_id, spec = experiment_spec(workdir, experiment_id)
        if kind == "global":
            weights = workdir.global_path(exp_id)
    elif spec is None:
        spec = experiment_spec(workdir, experiment_id)[1]
    if weights is None:
        from personalization.inside import PersonalModelStore

        try:
            latest = PersonalModelStore(workdir.root / "personal").latest(exp_id)
        except PersonalizationError as exc:
            raise WorkDirError(f"personal model of {exp_id} is unreadable: {exc}") from exc
        if latest is None:
            raise WorkDirError(f"no personal model of experiment {exp_id} yet")
        state: Mapping[str, object] = latest[1]
    else:
        state = _read_weights(weights, spec)
        if kind == "global":  # under DP the site's own running statistics (dp_statistics)
            state = _with_site_statistics(workdir, experiment_id, state)
    if plain:
        from site_agent.clinic.plain_unet import build_plain_unet

        model = build_plain_unet(spec)
    else:
        model = build_unet(spec)
    try:
        model.load_state_dict({k: _as_tensor(v) for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise ModelMismatchError(
            f"{weights.name if weights else 'personal model'} does not fit the U-Net of task "
            f"spec {spec.spec_hash()}: {str(exc).splitlines()[0]}"
        ) from exc
    return model.eval(), spec


def _with_site_statistics(
    workdir: WorkDir, experiment_id: str | None, state: Mapping[str, object]
) -> Mapping[str, object]:
    from site_agent.federation.uploads.dp_statistics import with_statistics

    try:
        exp_id = experiment_id or experiment_spec(workdir, None)[0]
    except WorkDirError:
        return state
    return with_statistics(workdir, exp_id, state)


def _read_weights(path: Path, spec: TaskSpec) -> Mapping[str, object]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WorkDirError(f"cannot read weights {path}: {exc.strerror}") from exc
    try:
        meta = read_header(data).get("__metadata__") or {}
        if "fedseg_format" in meta:
            bundle = decode_bundle(
                data, expected=expected_tensors(spec), spec_hash=spec.spec_hash()
            )
            return dict(bundle.tensors)
        from safetensors.numpy import load as st_load

        return dict(st_load(data))
    except DataSpecError as exc:
        raise ModelMismatchError(f"{path.name}: {exc}") from exc
    except (SafetensorError, ValueError, TypeError) as exc:
        raise ModelMismatchError(f"{path.name} is not a safetensors model file") from exc


def _metadata(path: Path) -> dict[str, str]:
    """The safetensors metadata of a file, or ``{}`` when it is not readable safetensors."""
    try:
        return read_file_header(path, max_bytes=ROUTING_MAX_HEADER_BYTES).metadata or {}
    except (OSError, DataSpecError):
        return {}


def _load_routed(
    workdir: WorkDir, experiment_id: str | None, weights: Path | None
) -> tuple[nn.Module, TaskSpec]:
    from personalization.outside import load_routed

    if weights is None:
        if experiment_id is None:
            folder = workdir.root / "routed"
            known = sorted(p.stem for p in folder.glob("*.safetensors"))
            if len(known) != 1:
                raise WorkDirError(
                    f"pass --experiment: routed models for {', '.join(known) or 'none'}"
                )
            experiment_id = known[0]
        weights = workdir.routed_path(experiment_id)
        if not weights.is_file():
            raise WorkDirError(f"no routed model of {experiment_id}: run `fedseg site adapt` first")
    try:
        model = load_routed(weights)
    except PersonalizationError as exc:
        raise ModelMismatchError(f"{weights.name}: {exc}") from exc
    return model.eval(), model.spec


def _as_tensor(value: object) -> object:
    import numpy as np
    import torch

    return torch.from_numpy(np.array(value)) if not isinstance(value, torch.Tensor) else value
