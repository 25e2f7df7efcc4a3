"""An outside site's models, from what ``fedseg site adapt`` left in the work dir.

- ``expert:<site>`` (or ``expert:<index>``; ``expert:global`` is the global model): one expert
  of the routing bundle kept in ``routing/<id>.safetensors``.
- ``routed``: what the safeguard chose (``adapted/<id>.json``): the adapted routed model, or
  the plain model it fell back to (``adapted/<id>.safetensors``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from data_specs.errors import DataSpecError
from data_specs.task_spec import TaskSpec, build_unet
from personalization.errors import PersonalizationError
from site_agent.errors import ModelMismatchError, ScanError, WorkDirError
from site_agent.federation.workdir import WorkDir

if TYPE_CHECKING:
    from torch import nn


def _single_experiment(workdir: WorkDir, experiment_id: str | None) -> str:
    if experiment_id is not None:
        return experiment_id
    from site_agent.clinic.models import known_experiments

    known = known_experiments(workdir)
    if len(known) != 1:
        choice = ", ".join(known) if known else "none yet (run `fedseg site adapt` first)"
        raise WorkDirError(f"pass --experiment: this site knows experiments {choice}")
    return known[0]


def read_choice(workdir: WorkDir, experiment_id: str) -> dict[str, object] | None:
    """The safeguard's record of an experiment, or None before ``fedseg site adapt``."""
    path = workdir.choice_path(experiment_id)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WorkDirError(f"{path} is unreadable; run `fedseg site adapt` again") from exc
    if not isinstance(record, dict) or not isinstance(record.get("choice"), str):
        raise WorkDirError(f"{path} is not an adaptation record; run `fedseg site adapt` again")
    return record


def load_outside_model(
    workdir: WorkDir, kind: str, experiment_id: str | None
) -> tuple[nn.Module, TaskSpec] | None:
    """``expert:<site>`` from the routing bundle, or ``routed`` as the safeguard chose.

    Returns:
        ``(model in eval mode, spec)``, or None when the work dir holds no such record (a
        ``routed`` request then falls through to the routed model file).

    Raises:
        ScanError: no expert of that name. WorkDirError: no routing bundle or unreadable
        files. ModelMismatchError: a corrupt model file.
    """
    exp_id = _single_experiment(workdir, experiment_id)
    if kind == "routed":
        record = read_choice(workdir, exp_id)
        if record is None or record["choice"] == "routed":
            return None
        return _load_chosen(workdir, exp_id)
    return _load_expert(workdir, exp_id, kind.removeprefix("expert:"))


def _load_expert(workdir: WorkDir, exp_id: str, wanted: str) -> tuple[nn.Module, TaskSpec]:
    from personalization.outside import decode_routing_bundle, global_model

    path = workdir.routing_path(exp_id)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise WorkDirError(
            f"no routing bundle of {exp_id} in {workdir.root}: run `fedseg site adapt` first"
        ) from None
    except OSError as exc:
        raise WorkDirError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        bundle = decode_routing_bundle(data)
    except (DataSpecError, PersonalizationError) as exc:
        raise ModelMismatchError(f"{path.name}: {exc}") from exc
    names = [s.name for s in bundle.sources]
    if wanted.isdigit() and int(wanted) < len(names):
        index = int(wanted)
    elif wanted in names:
        index = names.index(wanted)
    else:
        raise ScanError(
            f"--model expert:{wanted}: the routing bundle of {exp_id} holds experts "
            f"{', '.join(names)} (or their index 0..{len(names) - 1})"
        )
    return global_model(bundle.spec, bundle.experts[index]), bundle.spec


def _load_chosen(workdir: WorkDir, exp_id: str) -> tuple[nn.Module, TaskSpec]:
    import torch
    from pydantic import ValidationError
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    from site_agent.clinic.adapt import META_CHOSEN
    from site_agent.clinic.models import _metadata

    path = workdir.chosen_path(exp_id)
    if not path.is_file():
        raise WorkDirError(f"{path} is missing; run `fedseg site adapt` again")
    meta = _metadata(path)
    try:
        spec = TaskSpec.model_validate_json(meta["spec"])
        if META_CHOSEN not in meta:
            raise KeyError(META_CHOSEN)
        state = st_load(path.read_bytes())
        model = build_unet(spec)
        model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=True)
    except (KeyError, ValidationError, SafetensorError, RuntimeError, OSError) as exc:
        raise ModelMismatchError(
            f"{path.name} is not the model `fedseg site adapt` chose; run it again"
        ) from exc
    return model.eval(), spec
